//! The explorer's page and assets, compiled into the binary: the page works offline, and
//! nothing on disk is served.
//!
//! uPlot 1.6.32 (MIT, `assets/explorer/vendor/uPlot.LICENSE`) is the npm registry's package
//! `uplot`, its `dist/uPlot.iife.min.js` and `dist/uPlot.min.css` as published.

/// The assets by name: content type and bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../../assets/explorer/index.html"),
    ),
    (
        "explorer.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../assets/explorer/explorer.js"),
    ),
    (
        "explorer.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../assets/explorer/explorer.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../assets/explorer/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../assets/explorer/vendor/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../../assets/explorer/vendor/uPlot.LICENSE"),
    ),
];

/// The asset called `name` (exactly: no path is interpreted).
pub fn get(name: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, content_type, bytes)| (*content_type, *bytes))
}
