-- When the backup's objects are locked until (S3 Object Lock), as its manifest says.
ALTER TABLE backups ADD COLUMN locked_until TEXT;
