//! The D-Bus conversation with systemd's manager (org.freedesktop.systemd1),
//! through zbus. These functions start threads (zbus's executor): they run
//! only in the short-lived helper process of [`super::helper`], never in an
//! rt process that forks afterwards.

use zbus::blocking::{Connection, Proxy};
use zbus::zvariant::{OwnedObjectPath, Value as ZValue};

use super::props::{Property, Value};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const IFACE: &str = "org.freedesktop.systemd1.Manager";

/// The bus a driver talks to: the system's, or the user's own systemd
/// (rootless with `--systemd-cgroup`, as podman runs it).
pub fn address(user: bool) -> String {
    let var = if user {
        "DBUS_SESSION_BUS_ADDRESS"
    } else {
        "DBUS_SYSTEM_BUS_ADDRESS"
    };
    if let Some(a) = std::env::var_os(var).filter(|a| !a.is_empty()) {
        return a.to_string_lossy().into_owned();
    }
    if user {
        let dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| format!("/run/user/{}", nix::unistd::geteuid()).into());
        format!("unix:path={}", dir.join("bus").display())
    } else {
        "unix:path=/run/dbus/system_bus_socket".into()
    }
}

fn manager(user: bool) -> Result<(Connection, String), String> {
    let addr = address(user);
    let conn = zbus::blocking::connection::Builder::address(addr.as_str())
        .and_then(|b| b.build())
        .map_err(|e| format!("connecting to systemd over D-Bus ({addr}): {e}"))?;
    Ok((conn, addr))
}

fn proxy(conn: &Connection) -> Result<Proxy<'_>, String> {
    Proxy::new(conn, DEST, PATH, IFACE).map_err(|e| e.to_string())
}

fn variant(v: &Value) -> ZValue<'static> {
    match v {
        Value::Str(s) => ZValue::from(s.clone()),
        Value::Strs(v) => ZValue::from(v.clone()),
        Value::Bool(b) => ZValue::from(*b),
        Value::U64(n) => ZValue::from(*n),
        Value::Byte(n) => ZValue::from(*n),
        Value::I16(n) => ZValue::from(*n),
        Value::U16(n) => ZValue::from(*n),
        Value::I32(n) => ZValue::from(*n),
        Value::U32(n) => ZValue::from(*n),
        Value::I64(n) => ZValue::from(*n),
        Value::U64s(v) => ZValue::from(v.clone()),
        Value::I32s(v) => ZValue::from(v.clone()),
        Value::I64s(v) => ZValue::from(v.clone()),
        Value::Pids(p) => ZValue::from(p.clone()),
        Value::Mask(m) => ZValue::from(m.clone()),
        Value::Devices(d) => ZValue::from(d.clone()),
        Value::PerDevice(d) => ZValue::from(d.clone()),
    }
}

fn body(props: &[Property]) -> Vec<(&str, ZValue<'static>)> {
    props
        .iter()
        .map(|(n, v)| (n.as_str(), variant(v)))
        .collect()
}

/// Runs `call` (which returns a job), then waits for systemd's JobRemoved
/// for that job and returns its result ("done", "failed", ...).
fn with_job(
    conn: &Connection,
    call: impl FnOnce(&Proxy<'_>) -> zbus::Result<OwnedObjectPath>,
) -> Result<String, String> {
    let p = proxy(conn)?;
    // Signals reach only subscribed clients; the match rule comes first so
    // that a fast job's signal is not missed.
    p.call_method("Subscribe", &())
        .map_err(|e| format!("Subscribe: {e}"))?;
    let removed = p
        .receive_signal("JobRemoved")
        .map_err(|e| format!("watching JobRemoved: {e}"))?;
    let job = call(&p).map_err(|e| e.to_string())?;
    for msg in removed {
        let Ok((_, path, _, result)) = msg
            .body()
            .deserialize::<(u32, OwnedObjectPath, String, String)>()
        else {
            continue;
        };
        if path == job {
            return Ok(result);
        }
    }
    Err("the D-Bus connection closed before the job finished".into())
}

/// StartTransientUnit(unit, "replace", props) and its job's completion.
pub fn start(unit: &str, props: &[Property], user: bool) -> Result<(), String> {
    let (conn, _) = manager(user)?;
    let aux: Vec<(&str, Vec<(&str, ZValue<'_>)>)> = Vec::new();
    let result = with_job(&conn, |p| {
        p.call("StartTransientUnit", &(unit, "replace", body(props), aux))
    })
    .map_err(|e| format!("StartTransientUnit {unit}: {e}"))?;
    if result != "done" {
        return Err(format!("starting {unit}: the job's result is {result:?}"));
    }
    Ok(())
}

/// SetUnitProperties(unit, runtime = true, props): `rt update`.
pub fn set(unit: &str, props: &[Property], user: bool) -> Result<(), String> {
    let (conn, _) = manager(user)?;
    proxy(&conn)?
        .call_method("SetUnitProperties", &(unit, true, body(props)))
        .map_err(|e| format!("SetUnitProperties {unit}: {e}"))?;
    Ok(())
}

/// StopUnit(unit, "replace") and its job, then ResetFailedUnit so that no
/// failed unit stays listed. A unit systemd no longer knows is gone already.
pub fn stop(unit: &str, user: bool) -> Result<(), String> {
    let (conn, _) = manager(user)?;
    let result = with_job(&conn, |p| p.call("StopUnit", &(unit, "replace")));
    match result {
        Ok(r) if r == "done" => {}
        Ok(r) => return Err(format!("stopping {unit}: the job's result is {r:?}")),
        Err(e) if e.contains("NoSuchUnit") || e.contains("not loaded") => {}
        Err(e) => return Err(format!("StopUnit {unit}: {e}")),
    }
    // Only a failed unit needs it; any other answer means there is none.
    let _ = proxy(&conn)?.call_method("ResetFailedUnit", &(unit,));
    Ok(())
}

/// The unit's cgroup path, from its ControlGroup property.
pub fn control_group(unit: &str, user: bool) -> Result<String, String> {
    let (conn, _) = manager(user)?;
    let path: OwnedObjectPath = proxy(&conn)?
        .call("GetUnit", &(unit,))
        .map_err(|e| format!("GetUnit {unit}: {e}"))?;
    let iface = if unit.ends_with(".slice") {
        "org.freedesktop.systemd1.Slice"
    } else {
        "org.freedesktop.systemd1.Scope"
    };
    Proxy::new(&conn, DEST, path, iface)
        .and_then(|p| p.get_property::<String>("ControlGroup"))
        .map_err(|e| format!("reading {unit}'s ControlGroup: {e}"))
}
