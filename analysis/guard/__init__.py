"""`flagscope guard`: watch a rollout with one-sided always-valid tests and roll a harmful flag back through its flagd definition (flagd, runner)."""
