"""`flagscope ui`: a read-only web view of the lake (server-rendered pages, SVG charts)."""
