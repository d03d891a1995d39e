//! Environment variables that the server reads and the operator sets, named once.

/// The database URL (a Secret's value: it may hold a password).
pub const DATABASE_URL: &str = "NIXCACHE_DATABASE_URL";
/// Files holding the tokens, as mounted from their Secrets.
pub const UPLOAD_TOKEN_FILE: &str = "NIXCACHE_UPLOAD_TOKEN_FILE";
pub const READ_TOKEN_FILE: &str = "NIXCACHE_READ_TOKEN_FILE";
pub const ADMIN_TOKEN_FILE: &str = "NIXCACHE_ADMIN_TOKEN_FILE";
/// The settings file.
pub const CONFIG: &str = "NIXCACHE_CONFIG";
/// S3 credentials, read by the S3 client from the standard environment.
pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
