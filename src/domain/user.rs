//! The people who work the console and what each role may do (CONTRACT.md "Care records").

/// What a user is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes alerts: claims, calls, notes, resolves.
    Operator,
    /// An operator who also sees unmasked personal data and oversees the others.
    Supervisor,
    /// Everything, including users and configuration.
    Admin,
    /// Registers and fits devices; never handles alerts.
    Installer,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [
        Role::Operator,
        Role::Supervisor,
        Role::Admin,
        Role::Installer,
    ];

    /// The CONTRACT.md name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
            Role::Installer => "installer",
        }
    }

    /// Parses a CONTRACT.md name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// May claim, call about, note on and resolve alerts.
    pub fn handles_alerts(self) -> bool {
        self != Role::Installer
    }

    /// May create and change users, and reload the configuration.
    pub fn administers(self) -> bool {
        self == Role::Admin
    }
}

/// The shortest password a user may be given: NIST SP 800-63B's floor for memorised secrets.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// A login name: 1–64 of letters, digits, `.`, `_`, `-`, `@` (it appears in timelines and
/// logs, so nothing that could forge a line).
pub fn valid_login(login: &str) -> bool {
    (1..=64).contains(&login.len())
        && login
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_only_installers_keep_off_alerts() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(r.handles_alerts(), r != Role::Installer);
        }
        assert_eq!(Role::parse("root"), None);
        assert!(Role::Admin.administers() && !Role::Supervisor.administers());
    }

    #[test]
    fn logins_are_short_and_plain() {
        assert!(valid_login("li.wei@centre-1"));
        assert!(!valid_login(""));
        assert!(!valid_login("a b"));
        assert!(!valid_login("x\ny"));
        assert!(!valid_login(&"a".repeat(65)));
    }
}
