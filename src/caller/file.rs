//! The callers file: one caller per line, `IDENTITY [name=NAME] [allow=*|M1,M2] [mailbox=N]
//! [watchers=N]`, `#` starting a comment anywhere on a line (so an identity cannot hold `#`).

use super::{check_name, unnamed, Allow, Caller};
use crate::config::ConfigError;

/// One line of a callers file: the identity (key or certificate name) and its caller.
pub struct Entry {
    /// The API key, or the certificate's subject common name or SAN.
    pub identity: String,
    /// Who it is.
    pub caller: Caller,
    /// Whether the line gave `name=` (a certificate line without one is named after its
    /// identity).
    pub named: bool,
}

/// Parses a callers file; `what` names it in errors (`--api-keys-file PATH`).
pub fn parse_file(what: &str, text: &str) -> Result<Vec<Entry>, ConfigError> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.split('#').next().unwrap_or_default().trim();
            (!line.is_empty()).then_some((i + 1, line))
        })
        .map(|(n, line)| {
            parse_line(line).map_err(|e| ConfigError::Invalid(format!("{what} line {n}: {e}")))
        })
        .collect()
}

/// `IDENTITY [name=NAME] [allow=*|M1,M2] [mailbox=N] [watchers=N]`.
fn parse_line(line: &str) -> Result<Entry, String> {
    let mut words = line.split_whitespace();
    let identity = words.next().unwrap_or_default().to_owned();
    let mut caller = Caller::everything(&unnamed(&identity));
    let mut named = false;
    for word in words {
        let (field, value) = word
            .split_once('=')
            .ok_or_else(|| format!("{word:?}: expected name=, allow=, mailbox= or watchers="))?;
        match field {
            "name" => {
                check_name(value)?;
                caller.name = value.into();
                named = true;
            }
            "allow" => {
                caller.allow = Allow::parse(value)?;
                caller.explicit = true;
            }
            "mailbox" => caller.shares.mailbox = Some(count(field, value)?),
            "watchers" => caller.shares.watchers = Some(count(field, value)?),
            _ => return Err(format!("unknown field {field:?} in {word:?}")),
        }
    }
    Ok(Entry {
        identity,
        caller,
        named,
    })
}

/// A share: a positive whole number.
fn count(field: &str, value: &str) -> Result<u64, String> {
    value
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{field}={value}: expected a positive whole number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Result<Entry, String> {
        parse_line(line)
    }

    #[test]
    fn lines_name_callers_with_permissions_and_shares() {
        let e =
            one("k-orders-0123456789 name=orders allow=SendDirect,SendStream mailbox=50").unwrap();
        assert_eq!(e.identity, "k-orders-0123456789");
        assert_eq!(&*e.caller.name, "orders");
        assert!(e.caller.allow.permits("SendDirect"));
        assert!(e.caller.allow.permits("SendStream"));
        assert!(!e.caller.allow.permits("DisconnectUser"));
        assert!(!e.caller.allow.permits("Nope"));
        assert!(e.caller.explicit);
        assert_eq!(e.caller.shares.mailbox, Some(50));
        assert_eq!(e.caller.shares.watchers, None);
        assert_eq!(e.caller.allow.names(), "SendDirect,SendStream");

        let all = one("k name=ops allow=*").unwrap().caller;
        assert_eq!(all.allow, Allow::ALL);
        assert!(all.explicit);
        let implicit = one("bare-key-0123456789").unwrap().caller;
        assert_eq!(implicit.allow, Allow::ALL);
        assert!(!implicit.explicit);
        assert_eq!(&*implicit.name, unnamed("bare-key-0123456789"));
    }

    #[test]
    fn comments_start_anywhere_on_a_line() {
        let text = "# header\nfilekey1\n  filekey2 # trailing\n\n\tfilekey3\t#\n#filekey4\n";
        let keys: Vec<String> = parse_file("f", text)
            .unwrap()
            .into_iter()
            .map(|e| e.identity)
            .collect();
        assert_eq!(keys, ["filekey1", "filekey2", "filekey3"]);
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        for (line, says) in [
            ("k allow=SendDirect,Reboot", "unknown method \"Reboot\""),
            ("k allow=", "unknown method \"\""),
            ("k name=has{brace}", "name=has{brace}"),
            ("k name=", "name=: use"),
            ("k mailbox=0", "mailbox=0"),
            ("k watchers=-1", "watchers=-1"),
            ("k colour=red", "unknown field \"colour\""),
            ("k orders", "expected name="),
        ] {
            let err = one(line).err().unwrap_or_default();
            assert!(err.contains(says), "{line}: {err}");
        }
        let err = parse_file(
            "--api-keys-file f",
            "# top\n\nk1 name=a\nk2 name=b allow=X\n",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.starts_with("--api-keys-file f line 4: "), "{err}");
    }
}
