"""`flagscope schedule`: declared reports run on their crons (config, cron, runner), with a webhook when a verdict changes."""
