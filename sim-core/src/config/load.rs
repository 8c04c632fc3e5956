//! Loading: TOML parse, `--set` overrides, and errors that name the key and its line.

use std::fmt;

use toml::de::{DeTable, DeValue};

use super::{Config, limits, validate};

/// A configuration error, ready to show the user.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigError {
    /// The file (or "--set") the error is in.
    pub origin: String,
    /// 1-based line of the offending key, when the key is written in the file.
    pub line: Option<usize>,
    /// Dotted key, e.g. `machine.distance` or `process[0].thread[1].cpus`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A config file's text and the name to show in errors.
#[derive(Clone, Debug)]
pub struct Source {
    pub origin: String,
    pub text: String,
}

/// Parses, overrides and validates a scenario. `overrides` are `key=value` strings as given
/// to `--set`; a value that is not valid TOML is taken as a string, so
/// `kernel.gup_policy=explicit` works unquoted.
pub fn load(src: &Source, overrides: &[String]) -> Result<Config, ConfigError> {
    let config = parse_text(src)?;
    let mut config = if overrides.is_empty() {
        config
    } else {
        let mut table: toml::Table = toml::from_str(&src.text).map_err(|e| toml_error(src, &e, ""))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        from_table(table)?
    };
    name_threads(&mut config);
    validate(&config).and_then(|()| limits::check_memory_budget(&config)).map_err(|(path, message)| ConfigError {
        origin: src.origin.clone(),
        line: locate(&src.text, &path),
        key: path,
        message,
    })?;
    Ok(config)
}

/// Thread blocks without a name are `worker`s, a VM's are `vcpu`s.
fn name_threads(config: &mut Config) {
    for t in config.process.iter_mut().flat_map(|p| p.thread.iter_mut()) {
        if t.name.is_empty() {
            t.name = "worker".into();
        }
    }
    for vm in &mut config.vm {
        if vm.vcpus.name.is_empty() {
            vm.vcpus.name = "vcpu".into();
        }
    }
}

/// The resolved config as TOML: every default filled in. Loading it gives the same config.
pub fn to_toml(config: &Config) -> String {
    toml::to_string(config).expect("a Config always serializes")
}

fn parse_text(src: &Source) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::parse(&src.text).map_err(|e| toml_error(src, &e, ""))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        toml_error(src, e.inner(), &path)
    })
}

fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        ConfigError {
            origin: "--set".into(),
            line: None,
            message: explain(e.inner().message()),
            key: if key == "." { String::new() } else { key },
        }
    })
}

fn toml_error(src: &Source, e: &toml::de::Error, path: &str) -> ConfigError {
    ConfigError {
        origin: src.origin.clone(),
        line: e.span().map(|s| line_of(&src.text, s.start)),
        key: if path == "." { String::new() } else { path.to_string() },
        message: explain(e.message()),
    }
}

/// The 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// Adds "did you mean" to serde's "unknown field/variant `x`, expected one of `a`, `b`".
fn explain(message: &str) -> String {
    let message = message.trim().to_string();
    if !message.starts_with("unknown field") && !message.starts_with("unknown variant") {
        return message;
    }
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let Some((given, valid)) = quoted.split_first() else {
        return message;
    };
    match closest(given, valid) {
        Some(best) => format!("{message}; did you mean `{best}`?"),
        None => message,
    }
}

/// The candidate closest to `given` by edit distance, if it is close enough to be a typo.
pub fn closest<'a>(given: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(given, c), *c))
        .min()
        .filter(|(d, _)| *d <= given.len().max(3) / 2)
        .map(|(_, c)| c)
}

/// Most dot-separated parts a `--set` key may have.
const MAX_KEY_PARTS: usize = 16;

fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(), ConfigError> {
    let err =
        |key: &str, message: String| ConfigError { origin: "--set".into(), line: None, key: key.to_string(), message };
    let Some((key, raw)) = assignment.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
        return Err(err(assignment, "expected key=value".into()));
    };
    let key = key.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let path: Vec<&str> = key.split('.').collect();
    // The deepest key is `vm.0.vcpus.cpus`; a deeper one is a mistake, and following it
    // would build a table nested as deep (and recurse as deep when it is read).
    if path.iter().any(|p| p.trim().is_empty()) {
        return Err(err(key, "a key part is empty (two dots in a row, or a dot at an end)".into()));
    }
    if path.len() > MAX_KEY_PARTS {
        return Err(err(
            &key[..key.len().min(80)],
            format!("a key of {} parts: config keys have at most {MAX_KEY_PARTS}", path.len()),
        ));
    }
    let mut root = toml::Value::Table(std::mem::take(table));
    let result = set_path(&mut root, &path, value).map_err(|m| err(key, m));
    let toml::Value::Table(t) = root else { unreachable!("the root stays a table") };
    *table = t;
    result
}

/// Sets `path` (table keys and array indices) below `cur` to `value`, creating tables on the
/// way; array entries must exist already.
fn set_path(cur: &mut toml::Value, path: &[&str], value: toml::Value) -> Result<(), String> {
    let (head, rest) = path.split_first().expect("a key has at least one part");
    let slot = match cur {
        toml::Value::Table(t) => {
            if rest.is_empty() {
                t.insert(head.to_string(), value);
                return Ok(());
            }
            if !t.contains_key(*head) && rest[0].parse::<usize>().is_ok() {
                return Err(format!("there are no `{head}` entries to index"));
            }
            t.entry(head.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()))
        }
        toml::Value::Array(a) => {
            let idx: usize = head.parse().map_err(|_| format!("`{head}` is not an array index"))?;
            let len = a.len();
            let slot =
                a.get_mut(idx).ok_or_else(|| format!("index {idx} is out of range (the array has {len} entries)"))?;
            if rest.is_empty() {
                *slot = value;
                return Ok(());
            }
            slot
        }
        _ => return Err(format!("`{head}` is below a value that is not a table or an array")),
    };
    set_path(slot, rest, value)
}

/// The line on which dotted `path` (as validation names it, `a.b[2].c`) is written.
fn locate(text: &str, path: &str) -> Option<usize> {
    let segs: Vec<(&str, Option<usize>)> = path
        .split('.')
        .map(|seg| match seg.split_once('[') {
            Some((name, i)) => (name, i.trim_end_matches(']').parse().ok()),
            None => (seg, None),
        })
        .collect();
    locate_segments(text, &segs)
}

/// The line on which the key with these path segments (table names, then the key, taken
/// literally: a segment may contain dots) is written.
pub fn locate_key(text: &str, segments: &[&str]) -> Option<usize> {
    let segs: Vec<(&str, Option<usize>)> = segments.iter().map(|s| (*s, None)).collect();
    locate_segments(text, &segs)
}

fn locate_segments(text: &str, segs: &[(&str, Option<usize>)]) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let span = span_of(root.get_ref(), segs)?;
    Some(line_of(text, span.start))
}

fn span_of(table: &DeTable<'_>, segs: &[(&str, Option<usize>)]) -> Option<std::ops::Range<usize>> {
    let ((name, index), rest) = segs.split_first()?;
    let (_, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *name)?;
    let value = match (index, value.get_ref()) {
        (None, _) => value,
        (Some(i), DeValue::Array(items)) => items.get(*i)?,
        (Some(_), _) => return None,
    };
    match (rest, value.get_ref()) {
        ([], _) => Some(value.span()),
        (_, DeValue::Table(inner)) => span_of(inner, rest),
        _ => None,
    }
}
