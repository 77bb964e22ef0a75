//! A checker for the small part of JSON Schema (2020-12) that `docs/schema/*.json` use: `type`
//! (one or a list), `enum`, `minimum`, `properties`, `required`, `additionalProperties: false`
//! and `items`. It refuses a schema that uses anything else, so a schema cannot grow a rule this
//! checker would silently skip.

use serde_json::Value;

const KNOWN: &[&str] = &[
    "$schema",
    "$id",
    "title",
    "description",
    "type",
    "enum",
    "minimum",
    "properties",
    "required",
    "additionalProperties",
    "items",
];

/// The schema `docs/schema/NAME.schema.json`.
pub fn load(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schema")
        .join(format!("{name}.schema.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("schema")).expect("schema JSON")
}

/// Every way `v` breaks `schema`, each with its path (empty: it conforms).
pub fn check(schema: &Value, v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(schema, v, "$", &mut out);
    out
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "string" => v.is_string(),
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        other => panic!("unknown type {other} in a schema"),
    }
}

fn walk(s: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
    let obj = s.as_object().expect("a schema is an object");
    for k in obj.keys() {
        assert!(
            KNOWN.contains(&k.as_str()),
            "schema keyword {k} at {at} is not checked"
        );
    }
    if let Some(t) = obj.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => panic!("bad type at {at}"),
        };
        if !types.iter().any(|t| type_ok(t, v)) {
            out.push(format!("{at}: {v} is not {types:?}"));
            return;
        }
    }
    if let (Some(e), false) = (obj.get("enum"), v.is_null()) {
        if !e.as_array().expect("enum").contains(v) {
            out.push(format!("{at}: {v} is not one of {e}"));
        }
    }
    if let (Some(m), Some(n)) = (obj.get("minimum").and_then(Value::as_i64), v.as_i64()) {
        if n < m {
            out.push(format!("{at}: {n} < {m}"));
        }
    }
    if let (Some(props), Some(o)) = (
        obj.get("properties").and_then(Value::as_object),
        v.as_object(),
    ) {
        for r in obj
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().expect("required name");
            if !o.contains_key(r) {
                out.push(format!("{at}: no field {r}"));
            }
        }
        for (k, fv) in o {
            match props.get(k) {
                Some(ps) => walk(ps, fv, &format!("{at}.{k}"), out),
                None if obj.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    out.push(format!("{at}: field {k} is not in the schema"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(a)) = (obj.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            walk(items, x, &format!("{at}[{i}]"), out);
        }
    }
}
