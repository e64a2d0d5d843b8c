//! Names of tenants, components and workers. Every name that comes from outside is validated
//! here once, so the rest of the code can put it in keys and paths without a second thought.

use serde::{Deserialize, Serialize};

/// The longest name accepted for a tenant, component or worker.
pub const NAME_BYTES_MAX: usize = 128;

/// The names [`validate`] accepts, as a regular expression: the API's schema gives it for every
/// name, so that a client can check one before sending it.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {name:?}: {reason}")]
pub struct InvalidName {
    pub kind: &'static str,
    pub name: String,
    pub reason: &'static str,
}

fn validate(kind: &'static str, name: &str) -> Result<(), InvalidName> {
    let invalid = |reason| InvalidName {
        kind,
        name: name.chars().take(NAME_BYTES_MAX).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(invalid("it is longer than 128 bytes"));
    }
    if name.starts_with('.') {
        return Err(invalid("it starts with `.`"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "only ASCII letters, digits, `.`, `_` and `-` are allowed",
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
                let name = name.into();
                validate($kind, &name)?;
                Ok($name(name))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(name: String) -> Result<Self, InvalidName> {
                $name::new(name)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A tenant: the owner of components, workers, keys and usage.
    TenantId,
    "tenant"
);
name_type!(
    /// A component's name inside its tenant; its versions share it.
    ComponentName,
    "component"
);
name_type!(
    /// A public route's name inside its tenant.
    RouteName,
    "route"
);

name_type!(
    /// A worker's name inside its component.
    WorkerName,
    "worker"
);

impl TenantId {
    /// The tenant of a server without tenancy configured.
    pub fn default_tenant() -> TenantId {
        TenantId("default".to_string())
    }
}

/// A worker's full name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId {
    pub tenant: TenantId,
    pub component: ComponentName,
    pub worker: WorkerName,
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.component, self.worker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The pattern the API's schema gives is the validation itself, written another way.
        #[test]
        fn the_pattern_accepts_what_validation_accepts(
            name in "[A-Za-z0-9._ /%-]{0,3}[a-z.é_-]{0,130}",
        ) {
            let pattern = regex_lite::Regex::new(NAME_PATTERN).expect("the pattern compiles");
            prop_assert_eq!(pattern.is_match(&name), validate("worker", &name).is_ok(), "{:?}", name);
        }
    }

    #[test]
    fn the_pattern_holds_the_length_limit() {
        let pattern = regex_lite::Regex::new(NAME_PATTERN).expect("the pattern compiles");
        assert!(pattern.is_match(&"x".repeat(NAME_BYTES_MAX)));
        assert!(!pattern.is_match(&"x".repeat(NAME_BYTES_MAX + 1)));
    }

    #[test]
    fn names_are_validated() {
        for good in [
            "a",
            "counter-1",
            "my_worker.v2",
            &"x".repeat(NAME_BYTES_MAX),
        ] {
            assert!(WorkerName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            "ü",
            &"x".repeat(NAME_BYTES_MAX + 1),
        ] {
            let err = WorkerName::new(bad).expect_err(bad);
            assert_eq!(err.kind, "worker");
        }
        let parsed: Result<ComponentName, _> = serde_json::from_str("\"../etc\"");
        assert!(parsed.is_err());
    }
}
