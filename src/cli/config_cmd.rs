//! `pilotctl config`: shows and edits `~/.pilot/config.json`, the settings
//! `daemon start` remembers; and the checks that both it and `daemon start`
//! apply to those settings, so that a bad value is refused with the name of
//! the setting before it is ever saved.

use std::time::Duration;

use serde::Serialize;

use super::output::{kv, print_ok};
use super::{Cli, CliError, ConfigAction, ConfigArgs};
use crate::config::{Config, ConfigError, Paths};
use crate::ipc::ErrorCode;
use crate::wire::address::is_valid_hostname;

/// How long a registry or beacon host name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings `pilotctl config set` knows, as spelled on its command line.
pub(super) const KEYS: &[&str] = &[
    "registry",
    "beacon",
    "socket",
    "hostname",
    "email",
    "listen",
    "public",
    "log-level",
];

/// Loads the config; a damaged file is an error that names the file and
/// the ways out.
pub(super) fn load(paths: &Paths) -> Result<Config, CliError> {
    Config::load(&paths.config()).map_err(config_error)
}

/// A config error as a CLI error with the ways out.
pub(super) fn config_error(e: ConfigError) -> CliError {
    let hint = match e {
        ConfigError::Parse { .. } => {
            "; fix the file, or run `pilotctl config reset` to start from defaults"
        }
        ConfigError::Io { .. } => "",
    };
    CliError::new(ErrorCode::InvalidArgument, format!("{e}{hint}"))
}

fn invalid(msg: String) -> CliError {
    CliError::new(ErrorCode::InvalidArgument, msg)
}

/// Checks a `HOST:PORT` setting's form (`what` names the flag).
pub(super) fn check_host_port(what: &str, value: &str) -> Result<(), CliError> {
    let bad = |why: &str| {
        invalid(format!(
            "invalid {what} address {value:?}: {why} (expected HOST:PORT, e.g. 127.0.0.1:9000)"
        ))
    };
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("the port must be 1-65535")),
    }
}

/// Checks a `HOST:PORT` setting and that its host resolves.
pub(super) async fn resolve_host_port(what: &str, value: &str) -> Result<(), CliError> {
    check_host_port(what, value)?;
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(value)).await {
        Ok(Ok(mut addrs)) => match addrs.next() {
            Some(_) => Ok(()),
            None => Err(invalid(format!(
                "invalid {what} address {value:?}: the name has no address"
            ))),
        },
        Ok(Err(e)) => Err(invalid(format!(
            "invalid {what} address {value:?}: cannot resolve it ({e})"
        ))),
        Err(_) => Err(invalid(format!(
            "invalid {what} address {value:?}: resolving it took more than {RESOLVE_TIMEOUT:?}"
        ))),
    }
}

/// Checks the local UDP address (`IP:PORT`).
pub(super) fn check_listen(value: &str) -> Result<(), CliError> {
    value
        .parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| {
            invalid(format!(
                "invalid listen address {value:?} (expected IP:PORT, e.g. 0.0.0.0:4000)"
            ))
        })
}

/// Checks a hostname setting.
pub(super) fn check_hostname(value: &str) -> Result<(), CliError> {
    if is_valid_hostname(value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid hostname {value:?} (expected 1-63 of a-z, 0-9 and '-', not starting or ending with '-')"
        )))
    }
}

/// Checks a log filter the way the daemon will parse it.
pub(super) fn check_log_level(value: &str) -> Result<(), CliError> {
    if value.trim().is_empty() {
        return Err(invalid("invalid log level \"\" (expected error, warn, info, debug, trace, or a filter such as pilot=debug)".into()));
    }
    tracing_subscriber::EnvFilter::try_new(value)
        .map(|_| ())
        .map_err(|e| {
            invalid(format!(
                "invalid log level {value:?}: {e} (expected error, warn, info, debug, trace, or a filter such as pilot=debug)"
            ))
        })
}

/// Checks a `--registry` value: `HOST:PORT[,HOST:PORT...][#ed25519:KEY]`
/// (instances over one shared database, tried in turn), each must resolve.
async fn check_registry(r: &str) -> Result<(), CliError> {
    let (instances, _pin) =
        crate::rendezvous::pin::registry_instances(r).map_err(|e| invalid(e.to_string()))?;
    for one in &instances {
        resolve_host_port("registry", one).await?;
    }
    Ok(())
}

/// Checks a `--beacon` value: one `HOST:PORT`, or one per registry
/// instance in the same order (`A,B`: the beacon fails over with the
/// registry); each must resolve.
async fn check_beacons(b: &str, registry: Option<&str>) -> Result<(), CliError> {
    let list: Vec<&str> = b.split(',').map(str::trim).collect();
    if let Some(r) = registry {
        let (instances, _pin) =
            crate::rendezvous::pin::registry_instances(r).map_err(|e| invalid(e.to_string()))?;
        crate::rendezvous::pin::check_beacon_count(list.len(), instances.len()).map_err(invalid)?;
    }
    for one in list {
        resolve_host_port("beacon", one).await?;
    }
    Ok(())
}

/// Checks every setting a start will use (flags already merged in); the
/// registry and beacon must resolve.
pub(super) async fn check_all(config: &Config) -> Result<(), CliError> {
    if let Some(r) = config.registry.as_deref() {
        check_registry(r).await?;
    }
    if let Some(b) = config.beacon.as_deref() {
        check_beacons(b, config.registry.as_deref()).await?;
    }
    if let Some(h) = config.hostname.as_deref().filter(|h| !h.is_empty()) {
        check_hostname(h)?;
    }
    if let Some(l) = config.listen.as_deref() {
        check_listen(l)?;
    }
    if let Some(l) = config.log_level.as_deref() {
        check_log_level(l)?;
    }
    Ok(())
}

/// The slot of `key` in `config`, for string settings.
fn slot<'a>(config: &'a mut Config, key: &str) -> Option<&'a mut Option<String>> {
    Some(match key {
        "registry" => &mut config.registry,
        "beacon" => &mut config.beacon,
        "socket" => &mut config.socket,
        "hostname" => &mut config.hostname,
        "email" => &mut config.email,
        "listen" => &mut config.listen,
        "log-level" | "log_level" => &mut config.log_level,
        _ => return None,
    })
}

fn unknown_key(key: &str) -> CliError {
    invalid(format!(
        "unknown setting {key:?} (known: {})",
        KEYS.join(", ")
    ))
}

#[derive(Serialize)]
struct Shown<'a> {
    path: String,
    exists: bool,
    settings: &'a Config,
}

fn show(cli: &Cli, paths: &Paths, config: &Config) {
    let path = paths.config();
    let d = Shown {
        path: path.display().to_string(),
        exists: path.exists(),
        settings: config,
    };
    print_ok(cli.json, &d, || {
        let mut rows: Vec<(&str, String)> = Vec::new();
        let text = |v: &Option<String>| v.clone();
        for (k, v) in [
            ("registry", text(&config.registry)),
            ("beacon", text(&config.beacon)),
            ("socket", text(&config.socket)),
            ("hostname", text(&config.hostname)),
            ("email", text(&config.email)),
            ("listen", text(&config.listen)),
            ("public", config.public.map(|p| p.to_string())),
            ("log-level", text(&config.log_level)),
        ] {
            if let Some(v) = v {
                rows.push((k, v));
            }
        }
        let others: Vec<String> = config.other.keys().cloned().collect();
        if !others.is_empty() {
            rows.push(("(kept as is)", others.join(", ")));
        }
        if rows.is_empty() {
            format!("{}: no saved settings (defaults apply)", d.path)
        } else {
            format!("{}:\n{}", d.path, kv(&rows))
        }
    });
}

/// `pilotctl config [show|set|unset|reset]`.
pub(super) async fn run(cli: &Cli, args: &ConfigArgs) -> Result<(), CliError> {
    let paths = Paths::from_env();
    let path = paths.config();
    match args.action.clone().unwrap_or(ConfigAction::Show) {
        ConfigAction::Show => {
            let config = load(&paths)?;
            show(cli, &paths, &config);
        }
        ConfigAction::Set { key, value } => {
            let mut config = load(&paths)?;
            if key == "public" {
                config.public = Some(match value.as_str() {
                    "true" | "yes" | "1" => true,
                    "false" | "no" | "0" => false,
                    _ => {
                        return Err(invalid(format!(
                            "invalid value {value:?} for public (expected true or false)"
                        )))
                    }
                });
            } else {
                match key.as_str() {
                    "registry" => check_registry(&value).await?,
                    "beacon" => check_beacons(&value, None).await?,
                    "hostname" => check_hostname(&value)?,
                    "listen" => check_listen(&value)?,
                    "log-level" | "log_level" => check_log_level(&value)?,
                    "socket" | "email" if value.is_empty() => {
                        return Err(invalid(format!(
                            "empty {key}: use `pilotctl config unset {key}`"
                        )))
                    }
                    _ => {}
                }
                *slot(&mut config, &key).ok_or_else(|| unknown_key(&key))? = Some(value);
            }
            config.save(&path).map_err(config_error)?;
            show(cli, &paths, &config);
        }
        ConfigAction::Unset { key } => {
            let mut config = load(&paths)?;
            if key == "public" {
                config.public = None;
            } else {
                *slot(&mut config, &key).ok_or_else(|| unknown_key(&key))? = None;
            }
            config.save(&path).map_err(config_error)?;
            show(cli, &paths, &config);
        }
        ConfigAction::Reset => {
            if path.exists() {
                let bak = path.with_extension("json.bak");
                std::fs::rename(&path, &bak)
                    .map_err(|e| invalid(format!("cannot move {} aside: {e}", path.display())))?;
            }
            show(cli, &paths, &Config::default());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        for ok in ["127.0.0.1:9000", "example.org:1", "[::1]:9000"] {
            assert!(check_host_port("registry", ok).is_ok(), "{ok}");
        }
        for bad in [
            "nonsense",
            ":9000",
            "host:",
            "host:0",
            "host:99999",
            "host:x",
        ] {
            let e = check_host_port("registry", bad).unwrap_err();
            assert!(e.message.contains("registry address"), "{bad}: {e}");
            assert!(e.message.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn log_levels() {
        for ok in ["info", "debug", "pilot=trace,warn"] {
            assert!(check_log_level(ok).is_ok(), "{ok}");
        }
        for bad in ["", "pilot=loud"] {
            assert!(check_log_level(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_key_has_a_slot() {
        let mut c = Config::default();
        for k in KEYS.iter().filter(|k| **k != "public") {
            assert!(slot(&mut c, k).is_some(), "{k}");
        }
    }
}
