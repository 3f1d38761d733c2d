//! The table of built-in detectors: id, kind, replacement token and the priority used to resolve
//! overlapping findings. One place so the CLI can list them and the config can validate ids.
//!
//! Replacement tokens follow Presidio's entity names (`<EMAIL_ADDRESS>`, `<US_SSN>`,
//! `<CREDIT_CARD>`, ...), which is what `tests/fixtures/threats.jsonl` expects.

use crate::Kind;

/// Public description of one built-in detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorInfo {
    pub id: &'static str,
    pub kind: Kind,
    /// Text that replaces a redacted span, e.g. `<EMAIL_ADDRESS>`.
    pub replacement: &'static str,
    pub description: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Builtin {
    Email,
    Phone,
    UsSsn,
    CreditCard,
    Iban,
    IpAddress,
    AwsAccessKey,
    AwsSecretKey,
    GithubToken,
    SlackToken,
    PrivateKey,
    Jwt,
    Password,
    GenericSecret,
}

pub(crate) const ALL_BUILTINS: [Builtin; 14] = [
    Builtin::Email,
    Builtin::Phone,
    Builtin::UsSsn,
    Builtin::CreditCard,
    Builtin::Iban,
    Builtin::IpAddress,
    Builtin::AwsAccessKey,
    Builtin::AwsSecretKey,
    Builtin::GithubToken,
    Builtin::SlackToken,
    Builtin::PrivateKey,
    Builtin::Jwt,
    Builtin::Password,
    Builtin::GenericSecret,
];

/// All built-in detectors, in the order of [`Builtin`].
pub const BUILTIN_DETECTORS: &[DetectorInfo] = &[
    DetectorInfo {
        id: "pii.email",
        kind: Kind::Pii,
        replacement: "<EMAIL_ADDRESS>",
        description: "email address (not scp-style git remotes or URL user-info)",
    },
    DetectorInfo {
        id: "pii.phone",
        kind: Kind::Pii,
        replacement: "<PHONE_NUMBER>",
        description: "E.164 (+CC ...), NANP (415) 555-0132, trunk-0 national forms, digits-only JIDs",
    },
    DetectorInfo {
        id: "pii.us_ssn",
        kind: Kind::Pii,
        replacement: "<US_SSN>",
        description: "US SSN with area/group/serial validity; known sample numbers rejected",
    },
    DetectorInfo {
        id: "pii.credit_card",
        kind: Kind::Pii,
        replacement: "<CREDIT_CARD>",
        description: "13-19 digit card number: brand prefix + length + Luhn; spaces, dashes, full-width digits",
    },
    DetectorInfo {
        id: "pii.iban",
        kind: Kind::Pii,
        replacement: "<IBAN_CODE>",
        description: "IBAN with per-country length and mod-97 checksum",
    },
    DetectorInfo {
        id: "pii.ip_address",
        kind: Kind::Pii,
        replacement: "<IP_ADDRESS>",
        description: "IPv4/IPv6 address; not OIDs, version strings, loopback/unspecified/netmasks",
    },
    DetectorInfo {
        id: "secret.aws_access_key",
        kind: Kind::Secret,
        replacement: "<AWS_ACCESS_KEY>",
        description: "AWS access key id (AKIA/ASIA/ABIA/ACCA/A3T...), EXAMPLE keys allow-listed",
    },
    DetectorInfo {
        id: "secret.aws_secret_key",
        kind: Kind::Secret,
        replacement: "<AWS_SECRET_KEY>",
        description: "40-char AWS secret access key after an aws_secret/SecretAccessKey key name",
    },
    DetectorInfo {
        id: "secret.github_token",
        kind: Kind::Secret,
        replacement: "<GITHUB_TOKEN>",
        description: "GitHub token ghp_/gho_/ghu_/ghs_/ghr_ + 36, github_pat_ + 82",
    },
    DetectorInfo {
        id: "secret.slack_token",
        kind: Kind::Secret,
        replacement: "<SLACK_TOKEN>",
        description: "Slack token xox[baprs]-...",
    },
    DetectorInfo {
        id: "secret.private_key",
        kind: Kind::Secret,
        replacement: "<PRIVATE_KEY>",
        description: "PEM/OpenSSH/PGP private key block, header to footer",
    },
    DetectorInfo {
        id: "secret.jwt",
        kind: Kind::Secret,
        replacement: "<JWT>",
        description: "JSON Web Token whose header decodes to a JSON object with `alg`",
    },
    DetectorInfo {
        id: "secret.password",
        kind: Kind::Secret,
        replacement: "<PASSWORD>",
        description: "password in password=/passwd:/\"pwd\": assignments, URL user-info, HTTP Basic auth",
    },
    DetectorInfo {
        id: "secret.generic",
        kind: Kind::Secret,
        replacement: "<SECRET>",
        description: "high-entropy value assigned to secret/token/api_key-like names, Bearer tokens",
    },
];

impl Builtin {
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn info(self) -> &'static DetectorInfo {
        &BUILTIN_DETECTORS[self.index()]
    }

    /// Higher wins when two findings overlap. Specific secret formats beat the generic
    /// key=value detector; secrets beat PII; within PII the better-validated detectors win.
    pub(crate) fn priority(self) -> u8 {
        match self {
            Builtin::PrivateKey => 100,
            Builtin::Jwt | Builtin::AwsAccessKey | Builtin::GithubToken | Builtin::SlackToken => 95,
            Builtin::AwsSecretKey => 90,
            Builtin::Password => 75,
            Builtin::GenericSecret => 70,
            Builtin::CreditCard | Builtin::Iban | Builtin::UsSsn => 60,
            Builtin::Email => 55,
            Builtin::IpAddress => 45,
            Builtin::Phone => 40,
        }
    }
}

/// Priority of operator patterns: above the generic secret detector, below specific formats.
pub(crate) const CUSTOM_PRIORITY: u8 = 80;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_enum_order() {
        assert_eq!(ALL_BUILTINS.len(), BUILTIN_DETECTORS.len());
        for (i, b) in ALL_BUILTINS.iter().enumerate() {
            assert_eq!(b.index(), i);
            let info = b.info();
            let prefix = match info.kind {
                Kind::Pii => "pii.",
                Kind::Secret => "secret.",
            };
            assert!(info.id.starts_with(prefix), "{}", info.id);
            assert!(info.replacement.starts_with('<') && info.replacement.ends_with('>'));
        }
    }
}
