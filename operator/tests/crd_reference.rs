//! `docs/crd-reference.md` is generated from the CRD schema (the one `crdgen` writes),
//! so the field reference cannot drift from the types. The test fails when the committed
//! file differs; `UPDATE_GOLDEN=1 cargo test -p chatcluster-operator --test crd_reference`
//! rewrites it.

use serde_json::Value;

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/crd-reference.md");

/// Defaults longer than this are described by their fields' own rows instead.
const MAX_DEFAULT_CHARS: usize = 60;

/// One documented field.
struct Row {
    path: String,
    kind: String,
    default: String,
    required: bool,
    what: String,
}

/// The schema's type in the words a manifest author uses.
fn type_name(schema: &Value) -> String {
    if schema["x-kubernetes-int-or-string"] == true {
        return "integer or string".into();
    }
    match schema["type"].as_str() {
        Some("array") => format!("array of {}", type_name(&schema["items"])),
        Some("object") if schema.get("properties").is_none() => {
            match schema.get("additionalProperties") {
                Some(v) if v.is_object() => format!("map of {}", type_name(v)),
                _ => "object".into(),
            }
        }
        Some(t) => match schema["format"].as_str() {
            Some(f) => format!("{t} ({f})"),
            None => t.into(),
        },
        None => "any".into(),
    }
}

/// The description on one line, with the schema's constraints appended.
fn what(schema: &Value) -> String {
    let mut parts = vec![schema["description"]
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")];
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values
            .iter()
            .filter(|v| !v.is_null())
            .map(|v| format!("`{v}`"))
            .collect();
        parts.push(format!("One of: {}.", values.join(", ")));
    }
    for (key, words) in [
        ("minimum", "Minimum"),
        ("maximum", "Maximum"),
        ("minLength", "Minimum length"),
        ("maxLength", "Maximum length"),
        ("minItems", "At least"),
        ("maxItems", "At most"),
    ] {
        if let Some(v) = schema.get(key) {
            let unit = if key.ends_with("Items") { " items" } else { "" };
            // schemars writes integer bounds as floats (1.0).
            let v = match v.as_f64() {
                Some(f) if f.fract() == 0.0 => format!("{}", f as i64),
                _ => v.to_string(),
            };
            parts.push(format!("{words} {v}{unit}."));
        }
    }
    if let Some(p) = schema["pattern"].as_str() {
        parts.push(format!("Pattern `{p}`."));
    }
    parts.retain(|p| !p.is_empty());
    parts.join(" ").replace('|', "\\|")
}

/// Every field under `schema`, depth first in the schema's (alphabetical) order.
fn rows(path: &str, schema: &Value, out: &mut Vec<Row>) {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    for (name, field) in properties {
        let field_path = format!("{path}.{name}");
        let default = match field.get("default") {
            None => String::new(),
            Some(v) => {
                let text = v.to_string();
                if text.chars().count() > MAX_DEFAULT_CHARS {
                    "see its fields".into()
                } else {
                    format!("`{}`", text.replace('|', "\\|"))
                }
            }
        };
        out.push(Row {
            path: field_path.clone(),
            kind: type_name(field),
            default,
            required: required.contains(&name.as_str()),
            what: what(field),
        });
        if field["type"] == "array" {
            rows(&format!("{field_path}[]"), &field["items"], out);
        } else {
            rows(&field_path, field, out);
        }
    }
}

/// Every CEL rule with the field it sits on, in schema order.
fn rules(path: &str, schema: &Value, out: &mut Vec<(String, String)>) {
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let message = rule["message"].as_str().unwrap_or("");
        out.push((path.to_owned(), message.replace('|', "\\|")));
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, field) in properties {
            let p = format!("{path}.{name}");
            if field["type"] == "array" {
                rules(&format!("{p}[]"), &field["items"], out);
            } else {
                rules(&p, field, out);
            }
        }
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from("| Field | Type | Default | Description |\n|---|---|---|---|\n");
    for r in rows {
        let required = if r.required { " (required)" } else { "" };
        out.push_str(&format!(
            "| `{}`{required} | {} | {} | {} |\n",
            r.path, r.kind, r.default, r.what
        ));
    }
    out
}

fn reference() -> String {
    let crd = serde_json::to_value(chatcluster_operator::crd().expect("crd")).expect("json");
    let version = &crd["spec"]["versions"][0];
    let root = &version["schema"]["openAPIV3Schema"];
    let (mut spec, mut status, mut cel) = (Vec::new(), Vec::new(), Vec::new());
    rows("spec", &root["properties"]["spec"], &mut spec);
    rows("status", &root["properties"]["status"], &mut status);
    rules("spec", &root["properties"]["spec"], &mut cel);
    let mut out = format!(
        "# ChatCluster field reference\n\n\
         <!-- Generated from the CRD schema by operator/tests/crd_reference.rs; do not edit. \
         Regenerate: UPDATE_GOLDEN=1 cargo test -p chatcluster-operator --test crd_reference -->\n\n\
         `apiVersion: {}/{}`, `kind: {}` (short name `{}`). Every field is optional unless \
         marked required; a ChatCluster with only a name is valid. What the fields do \
         together, with examples: [operator.md](operator.md); authentication: \
         [operator-auth.md](operator-auth.md).\n\n## spec\n\n",
        crd["spec"]["group"].as_str().unwrap_or(""),
        version["name"].as_str().unwrap_or(""),
        crd["spec"]["names"]["kind"].as_str().unwrap_or(""),
        crd["spec"]["names"]["shortNames"][0].as_str().unwrap_or(""),
    );
    out.push_str(&table(&spec));
    out.push_str(
        "\n## Validation rules\n\nThe API server checks these rules (CEL) on create and \
         update, and refuses the object with the message shown.\n\n| On | Message |\n|---|---|\n",
    );
    for (path, message) in &cel {
        out.push_str(&format!("| `{path}` | {message} |\n"));
    }
    out.push_str("\n## status\n\nWritten by the operator; read-only for users.\n\n");
    out.push_str(&table(&status));
    out
}

#[test]
fn crd_reference_in_the_docs_matches_the_schema() {
    let generated = reference();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(DOC, &generated).expect("write docs/crd-reference.md");
    }
    let committed = std::fs::read_to_string(DOC).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/crd-reference.md differs from the CRD schema: run `UPDATE_GOLDEN=1 cargo test \
         -p chatcluster-operator --test crd_reference` and commit it"
    );
}

#[test]
fn every_spec_field_of_the_schema_has_a_row() {
    let doc = reference();
    for field in [
        "spec.replicas",
        "spec.auth.jwksUrl",
        "spec.auth.rooms[].access",
        "spec.drain.maxReconnectsPerSecond",
        "status.conditions",
    ] {
        assert!(doc.contains(&format!("| `{field}`")), "{field}");
    }
}
