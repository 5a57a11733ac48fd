-- The extended attributes of each cached file (JSON), so that a file the next backup
-- does not read again keeps them without a system call. NULL for rows written before:
-- then they are read from the file system, not assumed absent.
ALTER TABLE file_cache ADD COLUMN xattrs TEXT;
