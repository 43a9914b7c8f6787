-- Where each export webhook (`format = "export"`) is in the export feed (docs/EXPORT.md): the
-- cursor of the last page its endpoint answered 2xx to. A page not acknowledged is sent again.
CREATE TABLE export_cursors (
    endpoint   TEXT PRIMARY KEY,
    cursor     TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
