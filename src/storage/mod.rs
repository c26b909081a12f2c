//! Model sources: S3-compatible object storage (aws-sdk-s3) and local files.
