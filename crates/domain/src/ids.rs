//! Identifiers that cross the system's edge, validated once where they enter.

use std::fmt;

/// The longest ID, reference ID or tenant name accepted, in characters (contract §1, §3.3).
pub const MAX_ID_CHARS: usize = 255;

/// Why a caller-supplied identifier was refused. The text is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {chars} characters long; the limit is {MAX_ID_CHARS}")]
    TooLong { what: &'static str, chars: usize },
    #[error("{what} contains a control character")]
    ControlCharacter { what: &'static str },
    #[error("{what} may contain only letters, digits and '-', '_', '.', '~'")]
    NotUrlSafe { what: &'static str },
}

fn check_text(what: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    let chars = value.chars().count();
    if chars > MAX_ID_CHARS {
        return Err(IdError::TooLong { what, chars });
    }
    if value.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter { what });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// The tenant a process belongs to; single-tenant deployments use [`TenantId::default_tenant`].
    TenantId
);
string_id!(
    /// A server-issued (or seeded) asyncProcessId: opaque, unique, URL-safe.
    ProcessId
);
string_id!(
    /// A caller's business key; many processes may share one.
    ReferenceId
);
string_id!(
    /// What a status caller asked for: an asyncProcessId or a referenceId, not yet resolved.
    LookupId
);

impl TenantId {
    pub const DEFAULT: &'static str = "default";

    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        check_text("tenant", &value)?;
        Ok(Self(value))
    }

    pub fn default_tenant() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl ProcessId {
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        check_text("asyncProcessId", &value)?;
        if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')) {
            return Err(IdError::NotUrlSafe { what: "asyncProcessId" });
        }
        Ok(Self(value))
    }
}

impl ReferenceId {
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        check_text("referenceId", &value)?;
        Ok(Self(value))
    }
}

impl LookupId {
    /// Any text a reference ID could be, so a lookup never refuses an ID that could exist.
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        check_text("ID", &value)?;
        Ok(Self(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_counted_in_characters() {
        assert!(ReferenceId::new("é".repeat(255)).is_ok());
        assert_eq!(
            ReferenceId::new("é".repeat(256)),
            Err(IdError::TooLong { what: "referenceId", chars: 256 })
        );
        assert_eq!(LookupId::new(""), Err(IdError::Empty { what: "ID" }));
    }

    #[test]
    fn lookups_accept_spaces_and_unicode_but_not_control_characters() {
        assert!(LookupId::new("order 42 – Zürich").is_ok());
        assert_eq!(LookupId::new("a\nb"), Err(IdError::ControlCharacter { what: "ID" }));
    }

    #[test]
    fn process_ids_are_url_safe() {
        assert!(ProcessId::new("9876543").is_ok());
        assert!(ProcessId::new("0193a1b2-c3d4_e5.f6~").is_ok());
        assert_eq!(ProcessId::new("a b"), Err(IdError::NotUrlSafe { what: "asyncProcessId" }));
        assert_eq!(ProcessId::new("a/b"), Err(IdError::NotUrlSafe { what: "asyncProcessId" }));
    }

    #[test]
    fn the_default_tenant_is_named_default() {
        assert_eq!(TenantId::default_tenant().as_str(), "default");
        assert!(TenantId::new("").is_err());
    }
}
