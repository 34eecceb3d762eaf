//! Parsing an RBD image specification: `[rbd:]pool/image[@snap][:conf=PATH][:id=NAME]`.
//!
//! Available without the `rbd` feature, so a daemon built without librbd can still validate
//! a configuration and say why it cannot serve it ([`FEATURE_DISABLED`]).
//!
//! - `pool` and `image` are required and non-empty; `@snap` opens a snapshot (read-only).
//!   Pool namespaces (`pool/ns/image`) are not supported.
//! - Options follow the image, each introduced by `:` (as qemu spells it), or come separately
//!   through [`RbdSpec::apply_options`] as `conf=PATH;id=NAME` (as tgt's `bsopts` spells
//!   it, `;` or `,` between options). `conf` is the `ceph.conf` to read (default: librados'
//!   search path, `CEPH_CONF`), `id` the client name without `client.` (default `admin`).
//! - No part may contain a NUL byte (they become C strings). A key given twice is an error.

use std::fmt;
use std::path::PathBuf;

/// The message a daemon built without the `rbd` feature gives for `bstype = "rbd"`.
pub const FEATURE_DISABLED: &str = "bstype rbd needs tgt-cli built with --features rbd";

/// Whether this build can open RBD images (the `rbd` cargo feature).
pub const fn enabled() -> bool {
    cfg!(feature = "rbd")
}

/// Why an RBD specification was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RbdSpecError {
    /// The specification is empty.
    Empty,
    /// No `/` between pool and image.
    MissingImage,
    /// The pool name is empty.
    EmptyPool,
    /// The image name is empty.
    EmptyImage,
    /// `@` is not followed by a snapshot name.
    EmptySnap,
    /// More than one `/` (pool namespaces are not supported) or `@` in the image spec.
    ExtraSeparator,
    /// A NUL byte somewhere (names become C strings).
    Nul,
    /// An option without `=`.
    OptionWithoutValue,
    /// An option whose value is empty.
    EmptyOptionValue,
    /// An option other than `conf` and `id`.
    UnknownOption,
    /// The same option given twice.
    DuplicateOption,
}

impl fmt::Display for RbdSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RbdSpecError::Empty => "empty rbd image spec (expected pool/image[@snap])",
            RbdSpecError::MissingImage => "rbd image spec has no '/' (expected pool/image[@snap])",
            RbdSpecError::EmptyPool => "rbd pool name is empty",
            RbdSpecError::EmptyImage => "rbd image name is empty",
            RbdSpecError::EmptySnap => "rbd snapshot name after '@' is empty",
            RbdSpecError::ExtraSeparator => {
                "rbd image spec has more than one '/' or '@' (pool namespaces are not supported)"
            }
            RbdSpecError::Nul => "rbd image spec contains a NUL byte",
            RbdSpecError::OptionWithoutValue => "rbd option without '=' (expected conf=, id=)",
            RbdSpecError::EmptyOptionValue => "rbd option has an empty value",
            RbdSpecError::UnknownOption => "unknown rbd option (expected conf= or id=)",
            RbdSpecError::DuplicateOption => "rbd option given twice",
        })
    }
}

impl std::error::Error for RbdSpecError {}

/// An RBD image to open: pool, image, optional snapshot, and how to reach the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RbdSpec {
    /// The RADOS pool.
    pub pool: String,
    /// The image name.
    pub image: String,
    /// A snapshot to open instead of the image head (read-only).
    pub snap: Option<String>,
    /// The `ceph.conf` to read (`None`: librados' default search).
    pub conf: Option<PathBuf>,
    /// The client id, without `client.` (`None`: `admin`).
    pub id: Option<String>,
}

impl RbdSpec {
    /// The prefix that marks an RBD path in a configuration.
    pub const PREFIX: &'static str = "rbd:";

    /// Parse `[rbd:]pool/image[@snap][:conf=PATH][:id=NAME]`.
    pub fn parse(s: &str) -> Result<Self, RbdSpecError> {
        if s.contains('\0') {
            return Err(RbdSpecError::Nul);
        }
        let s = s.strip_prefix(Self::PREFIX).unwrap_or(s);
        if s.is_empty() {
            return Err(RbdSpecError::Empty);
        }
        let mut parts = s.split(':');
        let image_spec = parts.next().unwrap_or_default();
        let (pool, rest) = image_spec
            .split_once('/')
            .ok_or(RbdSpecError::MissingImage)?;
        if pool.is_empty() {
            return Err(RbdSpecError::EmptyPool);
        }
        let (image, snap) = match rest.split_once('@') {
            Some((image, snap)) => (image, Some(snap)),
            None => (rest, None),
        };
        if image.contains('/') || snap.is_some_and(|s| s.contains('@') || s.contains('/')) {
            return Err(RbdSpecError::ExtraSeparator);
        }
        if image.is_empty() {
            return Err(RbdSpecError::EmptyImage);
        }
        if snap.is_some_and(str::is_empty) {
            return Err(RbdSpecError::EmptySnap);
        }
        let mut spec = RbdSpec {
            pool: pool.to_owned(),
            image: image.to_owned(),
            snap: snap.map(str::to_owned),
            conf: None,
            id: None,
        };
        for opt in parts {
            spec.set_option(opt)?;
        }
        Ok(spec)
    }

    /// Apply options given apart from the image spec: `key=value` items separated by `;`
    /// or `,` (empty items are ignored), e.g. `conf=/etc/ceph/ceph.conf;id=iscsi`.
    pub fn apply_options(&mut self, opts: &str) -> Result<(), RbdSpecError> {
        if opts.contains('\0') {
            return Err(RbdSpecError::Nul);
        }
        for opt in opts.split([';', ',']).map(str::trim) {
            if !opt.is_empty() {
                self.set_option(opt)?;
            }
        }
        Ok(())
    }

    fn set_option(&mut self, opt: &str) -> Result<(), RbdSpecError> {
        let (key, value) = opt
            .split_once('=')
            .ok_or(RbdSpecError::OptionWithoutValue)?;
        if value.is_empty() {
            return Err(RbdSpecError::EmptyOptionValue);
        }
        match key.trim() {
            "conf" if self.conf.is_some() => Err(RbdSpecError::DuplicateOption),
            "conf" => {
                self.conf = Some(PathBuf::from(value));
                Ok(())
            }
            "id" if self.id.is_some() => Err(RbdSpecError::DuplicateOption),
            "id" => {
                let id = value.strip_prefix("client.").unwrap_or(value);
                if id.is_empty() {
                    return Err(RbdSpecError::EmptyOptionValue);
                }
                self.id = Some(id.to_owned());
                Ok(())
            }
            _ => Err(RbdSpecError::UnknownOption),
        }
    }

    /// The full client name librados authenticates as: `client.<id>` (`client.admin`).
    pub fn client_name(&self) -> String {
        format!("client.{}", self.id.as_deref().unwrap_or("admin"))
    }

    /// Whether the image opens read-only because a snapshot is named.
    pub fn is_snapshot(&self) -> bool {
        self.snap.is_some()
    }

    /// `pool/image[@snap]`, for messages.
    pub fn image_spec(&self) -> String {
        match &self.snap {
            Some(snap) => format!("{}/{}@{}", self.pool, self.image, snap),
            None => format!("{}/{}", self.pool, self.image),
        }
    }
}

impl fmt::Display for RbdSpec {
    /// The canonical spelling, which [`RbdSpec::parse`] reads back to the same spec:
    /// `rbd:pool/image[@snap][:conf=PATH][:id=NAME]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.image_spec())?;
        if let Some(conf) = &self.conf {
            write!(f, ":conf={}", conf.display())?;
        }
        if let Some(id) = &self.id {
            write!(f, ":id={id}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for RbdSpec {
    type Err = RbdSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pool: &str, image: &str, snap: Option<&str>) -> RbdSpec {
        RbdSpec {
            pool: pool.into(),
            image: image.into(),
            snap: snap.map(Into::into),
            conf: None,
            id: None,
        }
    }

    #[test]
    fn parses_plain_and_prefixed() {
        assert_eq!(RbdSpec::parse("rbd/disk1"), Ok(spec("rbd", "disk1", None)));
        assert_eq!(
            RbdSpec::parse("rbd:pool-a/img.2"),
            Ok(spec("pool-a", "img.2", None))
        );
        assert_eq!(
            RbdSpec::parse("rbd:p/i@snap-1"),
            Ok(spec("p", "i", Some("snap-1")))
        );
        assert_eq!("p/i@s".parse::<RbdSpec>(), Ok(spec("p", "i", Some("s"))));
        // Only one "rbd:" prefix is stripped: a pool may be called rbd.
        assert_eq!(RbdSpec::parse("rbd:rbd/x"), Ok(spec("rbd", "x", None)));
    }

    #[test]
    fn parses_inline_options() {
        let s = RbdSpec::parse("rbd:p/i@s:conf=/etc/ceph/c.conf:id=iscsi").unwrap();
        assert_eq!(s.pool, "p");
        assert_eq!(s.image, "i");
        assert_eq!(s.snap.as_deref(), Some("s"));
        assert_eq!(s.conf, Some(PathBuf::from("/etc/ceph/c.conf")));
        assert_eq!(s.id.as_deref(), Some("iscsi"));
        assert_eq!(s.client_name(), "client.iscsi");
        assert!(s.is_snapshot());
        let s = RbdSpec::parse("p/i:id=client.gw").unwrap();
        assert_eq!(s.id.as_deref(), Some("gw"));
        assert_eq!(s.client_name(), "client.gw");
        assert_eq!(RbdSpec::parse("p/i").unwrap().client_name(), "client.admin");
    }

    #[test]
    fn applies_separate_options() {
        let mut s = RbdSpec::parse("p/i").unwrap();
        s.apply_options(" conf=/c.conf ; id=x,").unwrap();
        assert_eq!(s.conf, Some(PathBuf::from("/c.conf")));
        assert_eq!(s.id.as_deref(), Some("x"));
        assert_eq!(s.apply_options("id=y"), Err(RbdSpecError::DuplicateOption));
        let mut s = RbdSpec::parse("p/i").unwrap();
        assert_eq!(s.apply_options(""), Ok(()));
        assert_eq!(s, spec("p", "i", None));
        assert_eq!(
            s.apply_options("conf"),
            Err(RbdSpecError::OptionWithoutValue)
        );
        assert_eq!(s.apply_options("pool=x"), Err(RbdSpecError::UnknownOption));
        assert_eq!(s.apply_options("id=a\0"), Err(RbdSpecError::Nul));
    }

    #[test]
    fn rejects_malformed() {
        let cases: &[(&str, RbdSpecError)] = &[
            ("", RbdSpecError::Empty),
            ("rbd:", RbdSpecError::Empty),
            ("image", RbdSpecError::MissingImage),
            ("rbd:image@snap", RbdSpecError::MissingImage),
            ("/image", RbdSpecError::EmptyPool),
            ("pool/", RbdSpecError::EmptyImage),
            ("pool/@snap", RbdSpecError::EmptyImage),
            ("pool/image@", RbdSpecError::EmptySnap),
            ("pool/ns/image", RbdSpecError::ExtraSeparator),
            ("pool/image@a@b", RbdSpecError::ExtraSeparator),
            ("pool/image@a/b", RbdSpecError::ExtraSeparator),
            ("pool/im\0age", RbdSpecError::Nul),
            ("pool/image:conf", RbdSpecError::OptionWithoutValue),
            ("pool/image:conf=", RbdSpecError::EmptyOptionValue),
            ("pool/image:id=client.", RbdSpecError::EmptyOptionValue),
            ("pool/image:user=x", RbdSpecError::UnknownOption),
            ("pool/image:id=a:id=b", RbdSpecError::DuplicateOption),
            ("pool/image:conf=/a:conf=/b", RbdSpecError::DuplicateOption),
            ("pool/image:", RbdSpecError::OptionWithoutValue),
        ];
        for (input, want) in cases {
            assert_eq!(RbdSpec::parse(input), Err(*want), "input {input:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "rbd:p/i",
            "rbd:p/i@s",
            "rbd:p/i:conf=/etc/ceph/ceph.conf",
            "rbd:p/i@s:conf=/x.conf:id=gw",
            "rbd:p/i:id=gw",
        ] {
            let s = RbdSpec::parse(input).unwrap();
            assert_eq!(s.to_string(), input);
            assert_eq!(RbdSpec::parse(&s.to_string()), Ok(s));
        }
        // Non-canonical spellings print canonically.
        let s = RbdSpec::parse("p/i:id=client.gw").unwrap();
        assert_eq!(s.to_string(), "rbd:p/i:id=gw");
        assert_eq!(s.image_spec(), "p/i");
        assert_eq!(spec("p", "i", Some("s")).image_spec(), "p/i@s");
    }

    #[test]
    fn errors_display_one_line() {
        for e in [
            RbdSpecError::Empty,
            RbdSpecError::MissingImage,
            RbdSpecError::EmptyPool,
            RbdSpecError::EmptyImage,
            RbdSpecError::EmptySnap,
            RbdSpecError::ExtraSeparator,
            RbdSpecError::Nul,
            RbdSpecError::OptionWithoutValue,
            RbdSpecError::EmptyOptionValue,
            RbdSpecError::UnknownOption,
            RbdSpecError::DuplicateOption,
        ] {
            let text = e.to_string();
            assert!(text.contains("rbd"), "{text}");
            assert!(!text.contains('\n'));
        }
        assert_eq!(
            FEATURE_DISABLED,
            "bstype rbd needs tgt-cli built with --features rbd"
        );
        assert_eq!(enabled(), cfg!(feature = "rbd"));
    }
}
