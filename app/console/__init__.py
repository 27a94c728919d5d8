"""The browser console at /console: static files shipped in the package, served with headers that
keep the page to itself (no inline script, no other origin). The page talks to the public API only."""
