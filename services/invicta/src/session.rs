//! What the CLI's commands share: the API client, what went wrong, and what a command prints.

use serde_json::Value;

/// What went wrong, and so which exit code.
pub(crate) enum Failure {
    Api(u16, Value),
    Network(String),
    Usage(String),
}

pub(crate) struct Client {
    pub(crate) base: String,
    pub(crate) key: Option<String>,
    pub(crate) http: reqwest::Client,
}

/// What a command prints: a table (header, rows), a single value, or JSON only.
pub(crate) enum Output {
    Table(Value, Vec<&'static str>, Vec<Vec<String>>),
    Text(Value, String),
    /// Everything was printed already.
    Nothing,
}
