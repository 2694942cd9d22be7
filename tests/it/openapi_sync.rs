//! `api/openapi.yaml` against the code.
//!
//! - The spec lists exactly the operations of `palisade::http::CLIENT_ROUTES` (axum's
//!   `{*key}` is OpenAPI's `{key}`), and nothing of the peer listener.
//! - The spec is well formed: every `$ref` resolves within the file, every operation has
//!   responses, path parameters are declared, schemas use only keywords this file's small
//!   validator understands, and every example matches its schema.
//! - The real router, behind a one-node cluster, serves every operation of the spec (no
//!   404 `not_found` / 405 route miss) and misses what the spec does not list; each route
//!   accepts exactly the query parameters the spec documents; and a tour of replies
//!   (successes and errors) matches the documented statuses, media types, headers and
//!   schemas; a node that cannot elect a leader gives the documented 503s; a node past
//!   `--max-watchers` gives the documented 429s; and history reads of every kind report
//!   the revision asked for, as the `revision` parameter says.
//! - Watch and election observer streams (`text/event-stream`, `application/x-ndjson`)
//!   never end by themselves: a reply of a stream media type is read until its first
//!   messages arrived (or it ended, or a patience ran out), and each message is checked,
//!   strictly framed, against the media type's `schema`, which for these two describes one
//!   item of the stream (as OpenAPI 3.2's `itemSchema` does): one SSE event `{id, event,
//!   data}`, whose `data` is checked through `contentMediaType`/`contentSchema`, or one
//!   NDJSON line.
//! - Locks, elections and the fence check get a tour of their own (every way a wait ends,
//!   the fence compare, observers, refusals), and their 429s, 503s and 507s are provoked.
//!
//! The schema validator below covers the JSON Schema subset the spec uses (`$ref`,
//! `allOf`/`anyOf`/`oneOf`/`not`, `type`, `enum`, `const`, `properties`, `required`,
//! `additionalProperties`, `items`, `minItems`/`maxItems`, `minimum`/`maximum`,
//! `minLength`/`maxLength`, `pattern`, and `contentSchema` of a string whose
//! `contentMediaType` is `application/json`); any other validation keyword in the spec
//! fails the well-formedness test, so it cannot be ignored silently. The key `pattern`s are checked
//! against the code's own key rules (`store::key::validate`) on a corpus of keys.
//!
//! A query parameter of type object with `style: form` and `explode: true` stands for the
//! query parameters named by its properties (the spec uses one for the reads, so that
//! parameters that do not combine are never sent together).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use palisade::config::Config;
use palisade::http::{client_router, CLIENT_ROUTES};
use palisade::node::Node;
use palisade::raft::Member;

const HTTP_METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options", "trace"];

/// Keywords that constrain values and that [`validate`] checks.
const CHECKED_KEYWORDS: &[&str] = &[
    "$ref",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "pattern",
    "contentSchema",
];

/// Keywords that only annotate (or, for `pattern`, are deliberately not checked).
const ANNOTATION_KEYWORDS: &[&str] = &[
    "description",
    "title",
    "summary",
    "example",
    "examples",
    "default",
    "format",
    "contentEncoding",
    "contentMediaType",
    "deprecated",
    "readOnly",
    "writeOnly",
];

// ---------------------------------------------------------------------------------------
// Loading the spec

fn load_spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/api/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"));
    yaml_to_json(&yaml)
}

/// YAML to JSON, with scalar mapping keys (such as unquoted status codes) as strings.
fn yaml_to_json(v: &serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => json!(b),
        Y::Number(n) => {
            if let Some(u) = n.as_u64() {
                json!(u)
            } else if let Some(i) = n.as_i64() {
                json!(i)
            } else {
                json!(n.as_f64())
            }
        }
        Y::String(s) => json!(s),
        Y::Sequence(s) => Value::Array(s.iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let k = match k {
                        Y::String(s) => s.clone(),
                        Y::Number(n) => n.to_string(),
                        Y::Bool(b) => b.to_string(),
                        other => panic!("unsupported mapping key {other:?} in the spec"),
                    };
                    (k, yaml_to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => yaml_to_json(&t.value),
    }
}

/// The object a local `$ref` (`#/components/...`) points to.
fn resolve<'a>(spec: &'a Value, reference: &str) -> Option<&'a Value> {
    spec.pointer(reference.strip_prefix('#')?)
}

/// Follows `$ref`s of a parameter, response or header object to the object itself.
fn deref<'a>(spec: &'a Value, mut v: &'a Value) -> &'a Value {
    for _ in 0..32 {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => v = resolve(spec, r).unwrap_or_else(|| panic!("$ref {r} does not resolve")),
            None => return v,
        }
    }
    panic!("a $ref chain is too long (a cycle?)")
}

fn paths(spec: &Value) -> &serde_json::Map<String, Value> {
    spec["paths"].as_object().expect("the spec has a `paths` object")
}

/// Every (METHOD, path template) the spec lists.
fn spec_operations(spec: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in paths(spec) {
        for m in HTTP_METHODS {
            if item.get(*m).is_some() {
                ops.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// axum path syntax to OpenAPI: `{*key}` (a wildcard) is `{key}`.
fn openapi_path(axum_path: &str) -> String {
    axum_path.replace("{*", "{")
}

fn router_operations() -> BTreeSet<(String, String)> {
    CLIENT_ROUTES.iter().map(|(m, p)| (m.to_string(), openapi_path(p))).collect()
}

fn operation<'a>(spec: &'a Value, method: &str, path: &str) -> &'a Value {
    spec["paths"][path]
        .get(method.to_lowercase())
        .unwrap_or_else(|| panic!("the spec has no {method} {path}"))
}

/// The parameters of an operation (path-level ones included), dereferenced.
fn parameters<'a>(spec: &'a Value, path: &str, method: &str) -> Vec<&'a Value> {
    let item = &spec["paths"][path];
    let op = operation(spec, method, path);
    let mut out: Vec<&Value> = Vec::new();
    for list in [item.get("parameters"), op.get("parameters")].into_iter().flatten() {
        for p in list.as_array().expect("parameters is a list") {
            let p = deref(spec, p);
            // An operation-level parameter overrides a path-level one of the same name and place.
            out.retain(|q| !(q["name"] == p["name"] && q["in"] == p["in"]));
            out.push(p);
        }
    }
    out
}

fn query_parameter_names(spec: &Value, path: &str, method: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for p in parameters(spec, path, method).into_iter().filter(|p| p["in"] == "query") {
        if is_exploded_object(spec, p) {
            names.extend(object_property_names(spec, &p["schema"]));
        } else {
            names.insert(p["name"].as_str().expect("a parameter has a name").to_string());
        }
    }
    names
}

/// Whether a query parameter is an object sent as one query parameter per property
/// (`style: form`, the default, with `explode: true`, also the default for form).
fn is_exploded_object(spec: &Value, p: &Value) -> bool {
    let schema = deref(spec, &p["schema"]);
    let object = schema["type"] == "object"
        || schema["oneOf"].as_array().is_some_and(|b| b.iter().all(|b| deref(spec, b)["type"] == "object"));
    object && p.get("style").is_none_or(|s| s == "form") && p.get("explode").is_none_or(|e| e == true)
}

/// The property names an object schema (or any of its `oneOf`/`anyOf`/`allOf` branches) lists.
fn object_property_names(spec: &Value, schema: &Value) -> BTreeSet<String> {
    let schema = deref(spec, schema);
    let mut names: BTreeSet<String> =
        schema["properties"].as_object().into_iter().flat_map(|m| m.keys().cloned()).collect();
    for list in ["oneOf", "anyOf", "allOf"] {
        for b in schema[list].as_array().into_iter().flatten() {
            names.extend(object_property_names(spec, b));
        }
    }
    names
}

/// The path parameters the router matches as wildcards (axum `{*name}`: a key contains
/// `/`); every other path parameter is one segment.
fn wildcard_parameters() -> BTreeSet<String> {
    CLIENT_ROUTES
        .iter()
        .flat_map(|(_, p)| p.split('/'))
        .filter_map(|seg| seg.strip_prefix("{*").and_then(|s| s.strip_suffix('}')))
        .map(str::to_string)
        .collect()
}

/// The spec path template a request path falls under, if any. A wildcard parameter
/// (`{key}`) takes the rest of the path, so it may only end a template; any other takes one
/// segment. The root of the key space (`/v1/kv/` and `/v1/kv`, `/v1/watch/` and
/// `/v1/watch`) falls under the template's `{key}`, as its `key` parameter documents.
fn template_of(spec: &Value, path: &str) -> Option<String> {
    for root in ["/v1/kv", "/v1/watch"] {
        if path == root || path.strip_prefix(root) == Some("/") {
            return Some(format!("{root}/{{key}}"));
        }
    }
    let wildcards = wildcard_parameters();
    let fits = |template: &str| {
        let mut segs = path.split('/');
        for t in template.split('/') {
            match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                Some(name) if wildcards.contains(name) => {
                    let rest: Vec<&str> = segs.by_ref().collect();
                    return !rest.is_empty() && !rest.join("/").is_empty();
                }
                Some(_) => {
                    if segs.next().is_none_or(str::is_empty) {
                        return false;
                    }
                }
                None => {
                    if segs.next() != Some(t) {
                        return false;
                    }
                }
            }
        }
        segs.next().is_none()
    };
    paths(spec).keys().find(|t| fits(t)).cloned()
}

// ---------------------------------------------------------------------------------------
// A small JSON Schema validator (the subset the spec uses)

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_u64() || v.is_i64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn matches(spec: &Value, schema: &Value, v: &Value) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    validate(spec, schema, v, "", &mut errs);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// Checks `v` against `schema`, appending what fails (at `at`) to `errs`.
fn validate(spec: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let here = if at.is_empty() { "(top)" } else { at };
    let s = match schema {
        Value::Bool(true) => return,
        Value::Bool(false) => return errs.push(format!("{here}: no value is allowed here")),
        Value::Object(s) => s,
        other => return errs.push(format!("{here}: the schema {other} is not a schema")),
    };
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        match resolve(spec, r) {
            Some(target) => validate(spec, target, v, at, errs),
            None => errs.push(format!("{here}: $ref {r} does not resolve")),
        }
    }
    for sub in s.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        validate(spec, sub, v, at, errs);
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
        if !any.iter().any(|sub| matches(spec, sub, v).is_ok()) {
            errs.push(format!("{here}: {v} matches none of the anyOf alternatives"));
        }
    }
    if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
        let results: Vec<_> = one.iter().map(|sub| matches(spec, sub, v)).collect();
        let n = results.iter().filter(|r| r.is_ok()).count();
        if n != 1 {
            let why: Vec<String> = results
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("#{i}: {}", e.join("; "))))
                .collect();
            errs.push(format!(
                "{here}: {v} matches {n} of the oneOf alternatives, not exactly one [{}]",
                why.join(" | ")
            ));
        }
    }
    if let Some(not) = s.get("not") {
        if matches(spec, not, v).is_ok() {
            errs.push(format!("{here}: {v} matches a `not` schema"));
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.iter().any(|t| type_ok(t, v)) {
            errs.push(format!("{here}: {v} is not of type {t}"));
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errs.push(format!("{here}: {v} is not one of {}", Value::Array(e.clone())));
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            errs.push(format!("{here}: {v} is not {c}"));
        }
    }
    if let Some(obj) = v.as_object() {
        if s.get("minProperties").and_then(Value::as_u64).is_some_and(|m| (obj.len() as u64) < m) {
            errs.push(format!("{here}: {} fields, fewer than minProperties", obj.len()));
        }
        for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
            let r = r.as_str().unwrap_or_default();
            if !obj.contains_key(r) {
                errs.push(format!("{here}: the required field `{r}` is missing"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, x) in obj {
            let at = format!("{at}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(sub) => validate(spec, sub, x, &at, errs),
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => errs.push(format!("{at}: a field the schema does not list")),
                    Some(sub @ Value::Object(_)) => validate(spec, sub, x, &at, errs),
                    _ => {}
                },
            }
        }
    }
    if let Some(arr) = v.as_array() {
        let n = arr.len() as u64;
        if s.get("minItems").and_then(Value::as_u64).is_some_and(|m| n < m) {
            errs.push(format!("{here}: {n} items, fewer than minItems"));
        }
        if s.get("maxItems").and_then(Value::as_u64).is_some_and(|m| n > m) {
            errs.push(format!("{here}: {n} items, more than maxItems"));
        }
    }
    if let (Some(arr), Some(items)) = (v.as_array(), s.get("items")) {
        for (i, x) in arr.iter().enumerate() {
            validate(spec, items, x, &format!("{at}[{i}]"), errs);
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
            if n < min {
                errs.push(format!("{here}: {v} is below the minimum {min}"));
            }
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
            if n > max {
                errs.push(format!("{here}: {v} is above the maximum {max}"));
            }
        }
    }
    if let Some(text) = v.as_str() {
        let len = text.chars().count() as u64;
        if s.get("minLength").and_then(Value::as_u64).is_some_and(|m| len < m) {
            errs.push(format!("{here}: {v} is shorter than minLength"));
        }
        if s.get("maxLength").and_then(Value::as_u64).is_some_and(|m| len > m) {
            errs.push(format!("{here}: {v} is longer than maxLength"));
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            match regex::Regex::new(p) {
                Ok(re) if re.is_match(text) => {}
                Ok(_) => errs.push(format!("{here}: {v} does not match the pattern {p}")),
                Err(e) => errs.push(format!("{here}: the pattern {p} does not compile: {e}")),
            }
        }
        // A string holding a document of another media type (an SSE event's `data`).
        if let Some(content) = s.get("contentSchema") {
            match s.get("contentMediaType").and_then(Value::as_str) {
                Some("application/json") => match serde_json::from_str::<Value>(text) {
                    Ok(doc) => validate(spec, content, &doc, &format!("{at}(json)"), errs),
                    Err(e) => errs.push(format!("{here}: {v} is not JSON: {e}")),
                },
                other => errs.push(format!("{here}: contentSchema with contentMediaType {other:?}")),
            }
        }
    }
}

/// Calls `f` on `schema` and on every schema nested in it (not through `$ref`).
fn walk_schema(schema: &Value, at: &str, f: &mut dyn FnMut(&Value, &str)) {
    f(schema, at);
    let Some(s) = schema.as_object() else { return };
    for list in ["allOf", "anyOf", "oneOf"] {
        for (i, sub) in s.get(list).and_then(Value::as_array).into_iter().flatten().enumerate() {
            walk_schema(sub, &format!("{at}/{list}/{i}"), f);
        }
    }
    for one in ["not", "items", "additionalProperties", "contentSchema"] {
        if let Some(sub) = s.get(one).filter(|v| v.is_object()) {
            walk_schema(sub, &format!("{at}/{one}"), f);
        }
    }
    for (k, sub) in s.get("properties").and_then(Value::as_object).into_iter().flatten() {
        walk_schema(sub, &format!("{at}/properties/{k}"), f);
    }
}

/// Every (location, schema) of the spec: component schemas and the `schema` of every
/// parameter, header and media type.
fn all_schemas(spec: &Value) -> Vec<(String, &Value)> {
    fn visit<'a>(v: &'a Value, at: &str, out: &mut Vec<(String, &'a Value)>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let here = format!("{at}/{k}");
                    if k == "example" || k == "examples" {
                        continue;
                    }
                    // A `schema` field, or a component schema, is a schema.
                    if k == "schema" || at == "#/components/schemas" {
                        out.push((here, x));
                    } else {
                        visit(x, &here, out);
                    }
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    visit(x, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    visit(spec, "#", &mut out);
    out
}

// ---------------------------------------------------------------------------------------
// Static checks

#[test]
fn spec_lists_exactly_the_client_routes() {
    let spec = load_spec();
    let in_spec = spec_operations(&spec);
    let in_router = router_operations();
    let missing: Vec<_> = in_router.difference(&in_spec).collect();
    let extra: Vec<_> = in_spec.difference(&in_router).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "api/openapi.yaml and palisade::http::CLIENT_ROUTES disagree.\n  routed but not in the spec: {missing:?}\n  in the spec but not routed: {extra:?}"
    );
    assert!(
        paths(&spec).keys().all(|p| !p.starts_with("/raft")),
        "the peer routes are served on the peer listener and are not part of the client API"
    );
    let description = spec["info"]["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("/raft/rpc"),
        "info.description should say that the peer route /raft/rpc is left out, and why"
    );
}

#[test]
fn spec_is_well_formed() {
    let spec = load_spec();
    let mut errs: Vec<String> = Vec::new();

    let version = spec["openapi"].as_str().unwrap_or_default();
    if !version.starts_with("3.1.") {
        errs.push(format!("openapi is {version:?}, expected 3.1.x"));
    }
    for field in ["title", "version", "description"] {
        if !spec["info"][field].is_string() {
            errs.push(format!("info.{field} is missing"));
        }
    }

    // Every $ref resolves within the file.
    fn refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "$ref" {
                        out.push((at.to_string(), x.as_str().unwrap_or("<not a string>").to_string()));
                    } else {
                        refs(x, &format!("{at}/{k}"), out);
                    }
                }
            }
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| refs(x, &format!("{at}/{i}"), out)),
            _ => {}
        }
    }
    let mut all_refs = Vec::new();
    refs(&spec, "#", &mut all_refs);
    assert!(!all_refs.is_empty(), "the spec uses no $ref at all: is this the right file?");
    for (at, r) in &all_refs {
        if !r.starts_with("#/") {
            errs.push(format!("{at}: $ref {r} points outside the file"));
        } else if resolve(&spec, r).is_none() {
            errs.push(format!("{at}: $ref {r} does not resolve"));
        }
    }
    if !errs.is_empty() {
        panic!("the spec is not well formed:\n  {}", errs.join("\n  "));
    }

    // Operations: ids, responses, parameters.
    let mut ids = BTreeSet::new();
    let wildcards = wildcard_parameters();
    for (path, item) in paths(&spec) {
        let segments: Vec<&str> = path.split('/').collect();
        for (i, seg) in segments.iter().enumerate() {
            let name = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
            if name.is_none() && seg.contains(['{', '}']) {
                errs.push(format!("{path}: a path parameter must be a whole segment"));
            }
            if name.is_some_and(|n| wildcards.contains(n)) && i + 1 != segments.len() {
                errs.push(format!("{path}: the wildcard parameter {seg} may only end the path"));
            }
        }
        for method in HTTP_METHODS.iter().filter(|m| item.get(**m).is_some()) {
            let op = &item[*method];
            let here = format!("{} {path}", method.to_uppercase());
            match op["operationId"].as_str() {
                Some(id) if ids.insert(id.to_string()) => {}
                Some(id) => errs.push(format!("{here}: operationId {id} is used twice")),
                None => errs.push(format!("{here}: no operationId")),
            }
            match op["responses"].as_object() {
                Some(r) if !r.is_empty() => {
                    for (status, resp) in r {
                        let resp = deref(&spec, resp);
                        if status != "default"
                            && !status.parse::<u16>().is_ok_and(|s| (100..600).contains(&s))
                        {
                            errs.push(format!("{here}: {status} is not a status code"));
                        }
                        if !resp["description"].is_string() {
                            errs.push(format!("{here}: response {status} has no description"));
                        }
                    }
                }
                _ => errs.push(format!("{here}: no responses")),
            }
            let params = parameters(&spec, path, method);
            let mut seen = BTreeSet::new();
            for p in &params {
                let (name, place) = (p["name"].as_str().unwrap_or("?"), p["in"].as_str().unwrap_or("?"));
                if !["query", "path", "header", "cookie"].contains(&place) {
                    errs.push(format!("{here}: parameter {name} is in {place:?}"));
                }
                if !seen.insert((name, place)) {
                    errs.push(format!("{here}: parameter {name} ({place}) is listed twice"));
                }
                if p.get("schema").is_none() && p.get("content").is_none() {
                    errs.push(format!("{here}: parameter {name} has no schema"));
                }
                if place == "path" && p["required"] != json!(true) {
                    errs.push(format!("{here}: path parameter {name} must be required"));
                }
            }
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(|c| c == '{' || c == '}');
                if !params.iter().any(|p| p["in"] == "path" && p["name"] == name) {
                    errs.push(format!("{here}: path parameter {name} is not declared"));
                }
            }
            if let Some(body) = op.get("requestBody") {
                if !deref(&spec, body)["content"].is_object() {
                    errs.push(format!("{here}: the request body has no content"));
                }
            }
        }
    }

    // Schemas use only keywords the validator checks or that merely annotate.
    for (at, schema) in all_schemas(&spec) {
        walk_schema(schema, &at, &mut |s, at| {
            for k in s.as_object().into_iter().flat_map(|m| m.keys()) {
                if !CHECKED_KEYWORDS.contains(&k.as_str()) && !ANNOTATION_KEYWORDS.contains(&k.as_str()) {
                    errs.push(format!(
                        "{at}: schema keyword `{k}` is not checked by tests/openapi_sync.rs (extend the validator)"
                    ));
                }
            }
        });
    }

    // Every example matches its schema (parameters, headers, media types).
    fn examples<'a>(v: &'a Value, at: &str, out: &mut Vec<(String, &'a Value, &'a Value)>) {
        match v {
            Value::Object(m) => {
                if let Some(schema) = m.get("schema") {
                    if let Some(x) = m.get("example") {
                        out.push((format!("{at}/example"), schema, x));
                    }
                    for (name, x) in m.get("examples").and_then(Value::as_object).into_iter().flatten() {
                        if let Some(value) = x.get("value") {
                            out.push((format!("{at}/examples/{name}"), schema, value));
                        }
                    }
                }
                for (k, x) in m {
                    if k != "example" && k != "examples" {
                        examples(x, &format!("{at}/{k}"), out);
                    }
                }
            }
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| examples(x, &format!("{at}/{i}"), out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    examples(&spec, "#", &mut found);
    assert!(found.len() >= 20, "the spec should carry examples; found only {}", found.len());
    for (at, schema, example) in found {
        // The example of a stream media type is a whole stream; its schema describes one item.
        if let Some(media) = STREAM_MEDIA.iter().find(|m| at.contains(&format!("/content/{m}/"))) {
            let text = example.as_str().unwrap_or_default();
            match parse_stream(media, text.as_bytes(), true) {
                Ok(items) if !items.is_empty() => {
                    errs.extend(
                        check_messages(&spec, schema, media, &items)
                            .into_iter()
                            .map(|e| format!("{at}: {e}")),
                    );
                }
                Ok(_) => errs.push(format!("{at}: the example of a stream holds no message")),
                Err(e) => errs.push(format!("{at}: the example is not a well-framed stream: {e}")),
            }
            continue;
        }
        if let Err(e) = matches(&spec, schema, example) {
            errs.push(format!("{at}: the example does not match its schema: {}", e.join("; ")));
        }
    }

    assert!(errs.is_empty(), "the spec is not well formed:\n  {}", errs.join("\n  "));
}

/// The key patterns say what `store::key::validate` says, on keys chosen to hit every rule
/// (lengths aside: `maxLength` is checked by the validator, and byte limits are the code's).
#[test]
fn key_patterns_match_the_key_rules() {
    let spec = load_spec();
    let schemas = &spec["components"]["schemas"];
    let pattern = |name: &str| {
        let p = schemas[name]["pattern"].as_str().unwrap_or_else(|| panic!("{name} has no pattern"));
        regex::Regex::new(p).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let (param, full, path) = (pattern("KeyPath"), pattern("Key"), pattern("Path"));
    let mut keys: Vec<String> = [
        "/",
        "//",
        "/a",
        "/a/",
        "/a//b",
        "/a/b",
        "/.",
        "/..",
        "/...",
        "/.a",
        "/a.",
        "/..a",
        "/a/./b",
        "/a/../b",
        "/a/.../b",
        "/.hidden/x",
        "/a b",
        "/ü/日本",
        "/emoji-🔒",
        "/a\u{00A0}b",
        "/%2e",
        "/a%2Fb",
        "/{x}",
        "/a\n",
        "/a\tb",
        "/\u{7f}",
        "/\u{80}x",
        "/x\u{9f}",
        "/\u{a0}",
        "/a\u{200B}",
        "/a\u{200F}",
        "/a\u{2010}",
        "/a\u{202A}",
        "/a\u{202E}",
        "/a\u{202F}",
        "/a\u{2060}",
        "/a\u{2064}",
        "/a\u{2065}",
        "/a\u{2066}",
        "/a\u{2069}",
        "/a\u{206A}",
        "/\u{FEFF}",
        "/\u{FEFE}",
        "/a/b/c/d",
        "a",
        "",
        "/a\n/b",
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    for c in [
        '\0', '\r', '\u{1b}', '\u{1f}', '\u{7f}', '\u{85}', '\u{9f}', '\u{200B}', '\u{200C}', '\u{200F}',
        '\u{202A}', '\u{202E}', '\u{2060}', '\u{2063}', '\u{2064}', '\u{2066}', '\u{2067}', '\u{2069}',
        '\u{FEFF}',
    ] {
        // Each excluded character in each place a pattern has a class: a segment's first
        // character, after a leading `.` or `..`, and later.
        for k in
            [format!("/x{c}y"), format!("/{c}"), format!("/a/.{c}"), format!("/..{c}"), format!("/.{c}.")]
        {
            keys.push(k);
        }
    }
    let mut errs = Vec::new();
    for k in &keys {
        let valid = palisade::store::key::validate(k, 1024).is_ok();
        let root = k == "/";
        let checks = [
            ("Path", path.is_match(k), valid),
            ("Key", full.is_match(k), valid && !root),
            ("KeyPath", k.strip_prefix('/').is_some_and(|rest| param.is_match(rest)), valid && !root),
        ];
        for (name, matched, expected) in checks {
            if matched != expected {
                errs.push(format!(
                    "{name} pattern on {k:?}: matches {matched}, the key rules say {expected}"
                ));
            }
        }
    }
    assert!(errs.is_empty(), "the key patterns and store::key::validate disagree:\n  {}", errs.join("\n  "));
}

// ---------------------------------------------------------------------------------------
// Against the real router

/// One node and its client router, in process. The data dir goes with it; Raft's tasks
/// end with the test's runtime even when the test fails before `stop`.
struct TestNode {
    node: Arc<Node>,
    router: Router,
    _dir: tempfile::TempDir,
}

/// A port that was free a moment ago (for addresses the node advertises).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

fn member() -> Member {
    Member {
        client_url: format!("http://127.0.0.1:{}", free_port()),
        peer_url: format!("http://127.0.0.1:{}", free_port()),
        incarnation: 0,
    }
}

impl TestNode {
    async fn start(configure: impl FnOnce(&mut Config)) -> TestNode {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut cfg = Config::new(1, dir.path().join("data"));
        let me = member();
        cfg.listen_client = me.client_url.trim_start_matches("http://").into();
        cfg.listen_peer = me.peer_url.trim_start_matches("http://").into();
        configure(&mut cfg);
        let node = Node::start(cfg).await.expect("the node starts");
        let router = client_router(node.clone());
        TestNode { node, router, _dir: dir }
    }

    async fn stop(self) {
        self.node.shutdown().await;
    }
}

struct Reply {
    method: String,
    uri: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    /// Whether the body was read to its end (always, except for a stream that was let go of
    /// after its first messages).
    ended: bool,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_string)
    }

    fn route_miss(&self) -> bool {
        self.status == StatusCode::METHOD_NOT_ALLOWED
            || (self.status == StatusCode::NOT_FOUND && self.error_code().as_deref() == Some("not_found"))
    }

    fn describe(&self) -> String {
        format!("{} {} -> {} {}", self.method, self.uri, self.status, String::from_utf8_lossy(&self.body))
    }

    /// The media type of the reply, without parameters.
    fn media_type(&self) -> String {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_string())
            .unwrap_or_default()
    }

    /// The messages of a stream reply (empty when it is none, or not well framed).
    fn messages(&self) -> Vec<StreamMessage> {
        parse_stream(&self.media_type(), &self.body, self.ended).unwrap_or_default()
    }

    fn header_u64(&self, name: &str) -> Option<u64> {
        self.headers.get(name).and_then(|v| v.to_str().ok()?.parse().ok())
    }
}

/// The media types of streams: a reply of one of them is read only until its first
/// messages arrived.
const STREAM_MEDIA: &[&str] = &["text/event-stream", "application/x-ndjson"];

/// How long a stream reply may take to send the messages a request waits for.
const STREAM_PATIENCE: Duration = Duration::from_secs(5);

/// One message of a stream, as received.
#[derive(Debug, Clone)]
struct StreamMessage {
    /// The SSE `id:` (none in NDJSON, nor for an SSE message sent without one).
    id: Option<String>,
    /// The message's JSON.
    data: Value,
    /// What the media type's `schema` describes: the SSE event as a parser reads it
    /// (`{id?, event, data}` with `data` the JSON text), or the NDJSON line's JSON.
    item: Value,
}

/// The messages of a stream's bytes, framed strictly as the spec describes: SSE messages
/// are `id:` (optional), `event:` and one `data:` line of JSON, each field once, then an
/// empty line; NDJSON messages are one JSON per line. A message cut off at the end is
/// fine while the stream goes on (the rest is still coming), an error once it `ended`.
fn parse_stream(media: &str, bytes: &[u8], ended: bool) -> Result<Vec<StreamMessage>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("the stream is not UTF-8: {e}"))?;
    let sse = match media {
        "text/event-stream" => true,
        "application/x-ndjson" => false,
        other => return Err(format!("{other:?} is not a stream media type")),
    };
    let sep = if sse { "\n\n" } else { "\n" };
    let mut pieces: Vec<&str> = text.split(sep).collect();
    let rest = pieces.pop().unwrap_or_default();
    if ended && !rest.is_empty() {
        return Err(format!("the stream ended inside a message: {rest:?}"));
    }
    let mut out = Vec::new();
    for piece in pieces {
        if !sse {
            let data: Value = serde_json::from_str(piece)
                .map_err(|e| format!("an NDJSON line is not JSON ({e}): {piece:?}"))?;
            out.push(StreamMessage { id: None, item: data.clone(), data });
            continue;
        }
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for line in piece.split('\n') {
            let (field, value) = line
                .split_once(": ")
                .ok_or_else(|| format!("an SSE line is not `field: value`: {line:?} in {piece:?}"))?;
            if !["id", "event", "data"].contains(&field) {
                return Err(format!("an SSE field the spec does not frame: {line:?} in {piece:?}"));
            }
            if fields.insert(field, value).is_some() {
                return Err(format!("the SSE field {field} twice in one message: {piece:?}"));
            }
        }
        let (Some(event), Some(raw)) = (fields.get("event"), fields.get("data")) else {
            return Err(format!("an SSE message without event or data: {piece:?}"));
        };
        let data: Value = serde_json::from_str(raw)
            .map_err(|e| format!("an SSE data line is not JSON ({e}): {piece:?}"))?;
        let mut item = json!({"event": event, "data": raw});
        if let Some(id) = fields.get("id") {
            item["id"] = json!(id);
        }
        out.push(StreamMessage { id: fields.get("id").map(|s| s.to_string()), data, item });
    }
    Ok(out)
}

async fn send(router: &Router, method: &str, uri: &str, body: Option<Vec<u8>>) -> Reply {
    send_with(router, method, uri, &[], body).await
}

async fn send_with(
    router: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Reply {
    send_reading(router, method, uri, headers, body, 1, STREAM_PATIENCE).await
}

/// Sends a request and reads its reply: the whole body, or for a stream until `messages`
/// messages arrived, the stream ended, or `patience` passed (then lets go of the stream,
/// which ends it).
async fn send_reading(
    router: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    messages: usize,
    patience: Duration,
) -> Reply {
    let mut req =
        Request::builder().method(Method::from_bytes(method.as_bytes()).expect("a method")).uri(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(body.map(Body::from).unwrap_or_else(Body::empty)).expect("a request");
    let resp = router.clone().oneshot(req).await.expect("the router is infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut reply = Reply {
        method: method.to_string(),
        uri: uri.to_string(),
        status,
        headers,
        body: Vec::new(),
        ended: true,
    };
    let media = reply.media_type();
    if !STREAM_MEDIA.contains(&media.as_str()) {
        reply.body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("a body").to_vec();
        return reply;
    }
    let sep: &[u8] = if media == "text/event-stream" { b"\n\n" } else { b"\n" };
    let mut body = resp.into_body();
    let deadline = tokio::time::Instant::now() + patience;
    reply.ended = false;
    while reply.body.windows(sep.len()).filter(|w| *w == sep).count() < messages {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => break,
            Ok(None) => {
                reply.ended = true;
                break;
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    reply.body.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(e))) => panic!("{method} {uri}: the stream failed: {e}"),
        }
    }
    reply
}

/// Whether `reply` is one the documented `response` object allows: media type, schema of
/// a JSON body (of each message of a stream), required headers present and well typed, and
/// no X-Palisade-*, Retry-After or Allow header the response does not document.
fn conform_to(spec: &Value, response: &Value, reply: &Reply, errs: &mut Vec<String>) {
    let response = deref(spec, response);
    let what = reply.describe();
    let documented: BTreeMap<String, &Value> = response
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, h)| (k.to_lowercase(), deref(spec, h)))
        .collect();
    for (name, h) in &documented {
        let Some(value) = reply.headers.get(name.as_str()) else {
            if h["required"] == json!(true) {
                errs.push(format!("{what}: the documented header {name} is missing"));
            }
            continue;
        };
        let text = value.to_str().unwrap_or_default();
        let schema = deref(spec, &h["schema"]);
        let value = if schema["type"] == "integer" {
            text.parse::<u64>().map(Value::from).unwrap_or_else(|_| json!(text))
        } else {
            json!(text)
        };
        if let Err(e) = matches(spec, &h["schema"], &value) {
            errs.push(format!("{what}: header {name}: {}", e.join("; ")));
        }
    }
    for name in reply.headers.keys().map(|n| n.as_str()) {
        let watched = name.starts_with("x-palisade-") || name == "retry-after" || name == "allow";
        if watched && !documented.contains_key(name) {
            errs.push(format!("{what}: the reply carries the undocumented header {name}"));
        }
    }
    if reply.method == "HEAD" {
        return;
    }
    let content = response.get("content").and_then(Value::as_object);
    let media = reply.media_type();
    let stream = STREAM_MEDIA.contains(&media.as_str());
    if reply.body.is_empty() && !stream {
        if content.is_some() {
            errs.push(format!("{what}: an empty body, but the response documents content"));
        }
        return;
    }
    let Some(content) = content else {
        return errs.push(format!("{what}: a body, but the response documents no content"));
    };
    let Some(doc) = content.get(&media) else {
        return errs.push(format!("{what}: media type {media:?} is not documented for this response"));
    };
    if stream {
        return conform_stream(spec, doc, reply, &media, errs);
    }
    if media == "application/json" {
        let Ok(body) = serde_json::from_slice::<Value>(&reply.body) else {
            return errs.push(format!("{what}: the body is not JSON"));
        };
        if let Some(schema) = doc.get("schema") {
            if let Err(e) = matches(spec, schema, &body) {
                errs.push(format!("{what}: the body does not match the schema: {}", e.join("; ")));
            }
        }
        if let (Some(h), Some(rev)) = (reply.headers.get("x-palisade-revision"), body.get("revision")) {
            if h.to_str().ok().and_then(|h| h.parse::<u64>().ok()) != rev.as_u64() {
                errs.push(format!("{what}: X-Palisade-Revision {h:?} differs from the body's revision"));
            }
        }
    }
}

/// The messages of a stream reply against its media type object (whose `schema` describes
/// one item), and the framing rules no schema states: an SSE message's `id` is its
/// revision, `compacted` has none, and `compacted` is the last message of a stream, which
/// ends with it. A stream that ended must not have ended empty or inside a message.
fn conform_stream(spec: &Value, doc: &Value, reply: &Reply, media: &str, errs: &mut Vec<String>) {
    let what = abbreviated(reply);
    let messages = match parse_stream(media, &reply.body, reply.ended) {
        Ok(m) => m,
        Err(e) => return errs.push(format!("{what}: {e}")),
    };
    if reply.ended && messages.is_empty() {
        errs.push(format!("{what}: the stream ended without a message"));
    }
    let Some(schema) = doc.get("schema") else {
        return errs.push(format!("{what}: the stream's media type documents no schema"));
    };
    errs.extend(check_messages(spec, schema, media, &messages).into_iter().map(|e| format!("{what}: {e}")));
}

/// What is wrong with the messages of a stream: each against `schema` (one item), and the
/// framing rules of watch streams that no schema states (an SSE `id` is the message's
/// revision, `compacted` has none and comes last). An election observer's SSE events have
/// no `id`, which their schema states.
fn check_messages(spec: &Value, schema: &Value, media: &str, messages: &[StreamMessage]) -> Vec<String> {
    let mut errs = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if let Err(e) = matches(spec, schema, &m.item) {
            errs.push(format!("message {i} does not match the schema: {}", e.join("; ")));
        }
        let is_compacted = m.data.get("compacted").is_some();
        if is_compacted && i + 1 != messages.len() {
            errs.push(format!("message {i} is `compacted` but more follow"));
        }
        let watch = is_compacted || m.data.get("events").is_some() || m.data.get("progress").is_some();
        if media == "text/event-stream" && watch {
            let revision = m.data.get("revision").or_else(|| m.data.get("progress")?.get("revision"));
            let want = if is_compacted { None } else { revision.map(|r| r.to_string()) };
            if m.id != want {
                errs.push(format!("message {i} has the SSE id {:?}, its revision says {want:?}", m.id));
            }
        }
    }
    errs
}

/// Whether `reply`, to a request the spec lists, is documented: its status among the
/// operation's responses, and the rest as [`conform_to`] checks.
fn conform(spec: &Value, reply: &Reply, errs: &mut Vec<String>) {
    let path = reply.uri.split('?').next().unwrap_or_default();
    let Some(template) = template_of(spec, path) else {
        return errs.push(format!("{}: no path of the spec matches", reply.describe()));
    };
    let method = if reply.method == "HEAD" { "GET" } else { reply.method.as_str() };
    let op = operation(spec, method, &template);
    let responses = &op["responses"];
    let Some(response) = responses.get(reply.status.as_str()).or_else(|| responses.get("default")) else {
        return errs.push(format!(
            "{}: status {} is not documented",
            reply.describe(),
            reply.status.as_u16()
        ));
    };
    conform_to(spec, response, reply, errs);
}

/// A request path for an operation: `{key}` becomes a sample key, every other path
/// parameter its example, and each required query parameter is given its example.
fn sample_uri(spec: &Value, method: &str, template: &str, key: &str) -> String {
    let mut uri = template.replace("{key}", key);
    for p in
        parameters(spec, template, method).into_iter().filter(|p| p["in"] == "path" && p["name"] != "key")
    {
        let name = p["name"].as_str().expect("a name");
        let value = match p.get("example").unwrap_or_else(|| panic!("path parameter {name} has no example")) {
            Value::String(v) => v.clone(),
            v => v.to_string(),
        };
        uri = uri.replace(&format!("{{{name}}}"), &value);
    }
    assert!(!uri.contains('{'), "{template}: give this test a sample value for its parameters");
    let required: Vec<String> = parameters(spec, template, method)
        .into_iter()
        .filter(|p| p["in"] == "query" && p["required"] == json!(true))
        .map(|p| {
            let name = p["name"].as_str().expect("a name");
            match p.get("example").unwrap_or_else(|| panic!("required parameter {name} has no example")) {
                Value::String(v) if v.is_empty() => name.to_string(),
                Value::String(v) => format!("{name}={v}"),
                v => format!("{name}={v}"),
            }
        })
        .collect();
    if !required.is_empty() {
        uri = format!("{uri}?{}", required.join("&"));
    }
    uri
}

/// The example body of an operation's request, if it has one.
fn example_body(spec: &Value, op: &Value) -> Option<Vec<u8>> {
    let body = deref(spec, op.get("requestBody")?);
    let media = &body["content"]["application/json"];
    let example = media
        .get("example")
        .or_else(|| media["examples"].as_object()?.values().next()?.get("value"))
        .unwrap_or_else(|| panic!("the request body of {} has no example", op["operationId"]));
    Some(serde_json::to_vec(example).expect("JSON"))
}

/// The query parameters a route accepts, as its refusal of an unknown one lists them.
fn accepted_parameters(reply: &Reply) -> Option<BTreeSet<String>> {
    let message = reply.json()["error"]["message"].as_str()?.to_string();
    let list = message.split_once("this route accepts: ")?.1;
    let list = &list[..list.rfind(')')?];
    Some(list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
}

/// Waits until `/readyz` says 200, checking every reply against the spec.
async fn wait_ready(spec: &Value, router: &Router, errs: &mut Vec<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = send(router, "GET", "/readyz", None).await;
        conform(spec, &r, errs);
        if r.status == StatusCode::OK {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the one-node cluster never got ready: {}",
            r.describe()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the lock and election examples name that only the live node knows: the owner and
/// fencing token the acquire example was granted, and the owner the campaign example was.
#[derive(Default)]
struct Granted {
    lock: Option<(String, u64)>,
    leader: Option<String>,
}

impl Granted {
    fn learn(&mut self, method: &str, template: &str, reply: &Reply) {
        let v = reply.json();
        let owner = v["owner"].as_str().map(str::to_string);
        match (method, template) {
            ("POST", "/v1/locks/{name}") => {
                self.lock = owner.zip(v["fencing_token"].as_u64());
            }
            ("POST", "/v1/elections/{name}/campaign") => self.leader = owner,
            _ => {}
        }
    }

    /// The sample URI, naming the live owner for a release or a resign.
    fn uri(&self, method: &str, template: &str, uri: String) -> String {
        let owner = match (method, template) {
            ("DELETE", "/v1/locks/{name}") => self.lock.as_ref().map(|(o, _)| o),
            ("DELETE", "/v1/elections/{name}/leader") => self.leader.as_ref(),
            _ => None,
        };
        match owner {
            Some(o) => format!("{}?owner={o}", uri.split('?').next().unwrap_or_default()),
            None => uri,
        }
    }

    /// The example body, naming the live leader for a proclaim and the live token for a
    /// fence check.
    fn body(&self, method: &str, template: &str, body: Option<Vec<u8>>) -> Option<Vec<u8>> {
        let live = match (method, template) {
            ("PUT", "/v1/elections/{name}/leader") => self.leader.as_ref().map(|o| ("owner", json!(o))),
            ("POST", "/v1/fence/check") => self.lock.as_ref().map(|(_, t)| ("token", json!(t))),
            _ => None,
        };
        let (Some((field, value)), Some(body)) = (live, &body) else { return body };
        let mut v: Value = serde_json::from_slice(body).expect("an example body is JSON");
        v[field] = value;
        Some(serde_json::to_vec(&v).expect("JSON"))
    }
}

/// The quota of the live node: small, so a 507 is cheap to provoke.
const QUOTA: u64 = 256 * 1024;

/// `--max-leases` of the live node: small, so a 507 is cheap to provoke.
const MAX_LEASES: u64 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_serves_the_spec_and_nothing_else() {
    let spec = load_spec();
    let n = TestNode::start(|cfg| {
        cfg.quota_bytes = QUOTA;
        cfg.max_leases = MAX_LEASES;
    })
    .await;
    let r = &n.router;
    let mut errs: Vec<String> = Vec::new();
    wait_ready(&spec, r, &mut errs).await;

    // 1. Every operation of the spec is routed (writes and creations first, so reads find
    // the key; deletes last). The sample lease (the `id` parameter's example) exists. The
    // acquire and the campaign come first, as the other lock and election routes name what
    // they made (the owners and the token, which only the live node knows, replace the
    // examples'), and the release and the resign come before the revoke of the sample
    // lease, which would end them.
    let lease_id = deref(&spec, &spec["components"]["parameters"]["LeaseId"])["example"].clone();
    let grant = send(
        r,
        "POST",
        "/v1/leases",
        Some(serde_json::to_vec(&json!({"ttl": "1h", "id": lease_id})).unwrap()),
    )
    .await;
    assert_eq!(grant.status, StatusCode::CREATED, "{}", grant.describe());
    conform(&spec, &grant, &mut errs);
    let lockish = |p: &str| p.starts_with("/v1/locks/") || p.starts_with("/v1/elections/");
    let rank = |m: &str, p: &str| match (m, lockish(p)) {
        ("POST", true) => 0,
        // The sample member is added before it is moved.
        ("POST", _) if p == "/v1/cluster/members" => 0,
        ("DELETE", true) => 4,
        (m, _) => [("PUT", 1), ("POST", 2), ("GET", 3), ("DELETE", 5)]
            .iter()
            .find_map(|(x, r)| (*x == m).then_some(*r))
            .unwrap_or(6),
    };
    let mut ops: Vec<_> = spec_operations(&spec).into_iter().collect();
    ops.sort_by_key(|(m, p)| (rank(m, p), p.clone()));
    let mut granted = Granted::default();
    for (method, template) in &ops {
        let op = operation(&spec, method, template);
        let uri = granted.uri(method, template, sample_uri(&spec, method, template, "openapi-sync/probe/k"));
        let body = granted.body(method, template, example_body(&spec, op));
        let reply = send(r, method, &uri, body).await;
        granted.learn(method, template, &reply);
        if reply.route_miss() {
            errs.push(format!(
                "{method} {template} is in the spec but the router misses it: {}",
                reply.describe()
            ));
        } else if !reply.status.is_success() && !promote_refused(method, template, &reply) {
            errs.push(format!("the spec's own example of {method} {template} fails: {}", reply.describe()));
        }
        conform(&spec, &reply, &mut errs);
        if method == "GET" {
            // axum answers HEAD on every GET route.
            let head = send(r, "HEAD", &uri, None).await;
            if head.route_miss() || head.status != reply.status {
                errs.push(format!("HEAD {template} differs from GET: {}", head.describe()));
            }
            conform(&spec, &head, &mut errs);
        }
    }

    // 2. Each route accepts exactly the query parameters the spec documents: a refusal of
    // an unknown parameter lists what the route accepts.
    for (method, template) in &ops {
        let op = operation(&spec, method, template);
        let sample = sample_uri(&spec, method, template, "openapi-sync/probe/params");
        let uri = format!("{sample}{}zz_not_a_parameter=1", if sample.contains('?') { '&' } else { '?' });
        let reply = send(r, method, &uri, example_body(&spec, op)).await;
        let documented = query_parameter_names(&spec, template, method);
        match accepted_parameters(&reply) {
            Some(accepted) => {
                if accepted != documented {
                    errs.push(format!(
                        "{method} {template}: the route accepts the query parameters {accepted:?}, the spec documents {documented:?}"
                    ));
                }
                if reply.status != StatusCode::BAD_REQUEST
                    || reply.error_code().as_deref() != Some("invalid_argument")
                {
                    errs.push(format!("an unknown query parameter should be 400 invalid_argument: {}", reply.describe()));
                }
            }
            // The route reads no query string (the spec says so in info.description).
            None if documented.is_empty() && reply.status.is_success() => {}
            None => errs.push(format!(
                "{method} {template}: an unknown query parameter was not refused with the list of accepted ones: {}",
                reply.describe()
            )),
        }
        conform(&spec, &reply, &mut errs);
    }

    // 3. A tour of replies, each checked against the documented status, headers and schema.
    let p = "/v1/kv/openapi-sync/tour";
    let mut tour = Tour { spec: &spec, router: r, errs: &mut errs };
    let first = tour.check("PUT", &format!("{p}/a"), Some(br#"{"value":"1"}"#.to_vec()), 200).await;
    let first_rev = first.json()["revision"].as_u64().unwrap_or(1);
    tour.check("PUT", &format!("{p}/a/b"), Some(br#"{"value":"2", "lease": null}"#.to_vec()), 200).await;
    tour.check("PUT", &format!("{p}/c"), Some(br#"{"value_base64":"3q2+7w=="}"#.to_vec()), 200).await;
    let put = tour.check("PUT", &format!("{p}/a?prev_kv"), Some(br#"{"value":"1b"}"#.to_vec()), 200).await;
    tour.expect(put.json()["prev_kv"]["value"] == "1", &put, "prev_kv holds the old value");
    let get = tour.check("GET", &format!("{p}/c"), None, 200).await;
    tour.expect(
        get.json()["kv"]["value_base64"] == "3q2+7w==",
        &get,
        "binary values come back as value_base64",
    );
    let page = tour.check("GET", &format!("{p}?recursive&limit=1"), None, 200).await;
    tour.expect(
        page.json()["more"] == true && page.json()["count"] == 3,
        &page,
        "a first page of three keys",
    );
    let next = page.json()["next"].as_str().unwrap_or_default().to_string();
    let page2 = tour.check("GET", &format!("{p}?recursive=true&limit=2&after={next}"), None, 200).await;
    tour.expect(page2.json()["revision"] == page.json()["revision"], &page2, "pages share one revision");
    let keys = tour.check("GET", &format!("{p}?recursive&keys_only"), None, 200).await;
    tour.expect(keys.json()["kvs"][0].get("value").is_none(), &keys, "keys_only leaves values out");
    let count = tour.check("GET", &format!("{p}?recursive&count_only=1"), None, 200).await;
    tour.expect(count.json()["count"] == 3, &count, "count_only counts the subtree");
    tour.check("GET", &format!("{p}?children"), None, 200).await;
    tour.check("GET", &format!("{p}?children&limit=1"), None, 200).await;
    let empty = tour.check("GET", &format!("{p}/nothing?children"), None, 200).await;
    tour.expect(empty.json()["children"] == json!([]), &empty, "children of an empty path");
    let raw = tour.check("GET", &format!("{p}/a?raw"), None, 200).await;
    tour.expect(raw.body == b"1b", &raw, "raw returns the bare value");
    tour.check("GET", &format!("{p}/a?consistency=serializable"), None, 200).await;
    tour.check("GET", &format!("{p}/a?consistency=linearizable"), None, 200).await;
    let old = tour.check("GET", &format!("{p}/a?revision={first_rev}"), None, 200).await;
    tour.expect(
        old.json()["revision"] == first_rev && old.json()["kv"]["value"] == "1",
        &old,
        "a history read",
    );
    tour.check("GET", "/v1/kv/?recursive&count_only", None, 200).await;
    tour.check("GET", "/v1/kv?children&limit=5", None, 200).await;
    tour.check("GET", &format!("{p}/missing"), None, 404).await;
    tour.check("GET", &format!("{p}/a?revision=999999999"), None, 400).await;
    tour.check("GET", &format!("{p}/a?revision=0"), None, 400).await;
    tour.check("GET", &format!("{p}?recurisve"), None, 400).await;
    tour.check("GET", &format!("{p}?recursive&children"), None, 400).await;
    tour.check("GET", &format!("{p}?recursive&after=garbage"), None, 400).await;
    tour.check("GET", &format!("{p}/a?limit=5"), None, 400).await;
    tour.check("GET", &format!("{p}/a?consistency=eventual"), None, 400).await;
    tour.check("GET", "/v1/kv/openapi-sync//x", None, 400).await;
    tour.check("GET", "/v1/kv/openapi-sync/x/", None, 400).await;
    tour.check("GET", "/v1/kv", None, 400).await;
    let cas =
        tour.check("PUT", &format!("{p}/a?if_version=0"), Some(br#"{"value":"x"}"#.to_vec()), 409).await;
    tour.expect(cas.json()["error"]["current"]["value"] == "1b", &cas, "409 carries the current kv");
    let cas =
        tour.check("PUT", &format!("{p}/zz?if_version=3"), Some(br#"{"value":"x"}"#.to_vec()), 409).await;
    tour.expect(cas.json()["error"]["current"].is_null(), &cas, "409 on a missing key: current null");
    tour.check("PUT", &format!("{p}/a?if_value=1b&if_version=2"), Some(br#"{"value":"1c"}"#.to_vec()), 200)
        .await;
    tour.check("PUT", &format!("{p}/a"), Some(Vec::new()), 400).await;
    tour.check("PUT", &format!("{p}/a"), Some(b"{".to_vec()), 400).await;
    tour.check("PUT", &format!("{p}/a"), Some(br#"{"value":"x","bogus":1}"#.to_vec()), 400).await;
    tour.check("PUT", &format!("{p}/a"), Some(br#"{"value":"x","value_base64":"eA=="}"#.to_vec()), 400).await;
    tour.check("PUT", &format!("{p}/a"), Some(br#"{"value_base64":"%%%"}"#.to_vec()), 400).await;
    tour.check("PUT", &format!("{p}/a?if_version=-1"), Some(br#"{"value":"x"}"#.to_vec()), 400).await;
    tour.check("PUT", "/v1/kv/", Some(br#"{"value":"x"}"#.to_vec()), 400).await;
    tour.check("PUT", &format!("{p}/a"), Some(br#"{"value":"x","lease":7}"#.to_vec()), 404).await;
    let big_value = format!(r#"{{"value":"{}"}}"#, "v".repeat(1024 * 1024 + 1));
    tour.check("PUT", &format!("{p}/big"), Some(big_value.into_bytes()), 413).await;
    let big_body = format!(r#"{{"value":"x"}}{}"#, " ".repeat(2 * 1024 * 1024));
    tour.check("PUT", &format!("{p}/big"), Some(big_body.into_bytes()), 413).await;
    let over_quota = format!(r#"{{"value":"{}"}}"#, "q".repeat(QUOTA as usize));
    tour.check("PUT", &format!("{p}/big"), Some(over_quota.into_bytes()), 507).await;
    tour.check("DELETE", &format!("{p}/c?if_value=nope"), None, 409).await;
    let del = tour.check("DELETE", &format!("{p}/a?recursive&prev_kv"), None, 200).await;
    tour.expect(
        del.json()["deleted"] == 2 && del.json()["prev_kvs"].as_array().is_some_and(|a| a.len() == 2),
        &del,
        "a recursive delete with prev_kv",
    );
    let none = tour.check("DELETE", &format!("{p}/a"), None, 200).await;
    tour.expect(
        none.json()["deleted"] == 0 && none.json().get("prev_kvs").is_none(),
        &none,
        "deleting nothing",
    );
    tour.check("DELETE", "/v1/kv/?recursive", None, 400).await;
    tour.check("DELETE", &format!("{p}/c?recursive=maybe"), None, 400).await;
    tour.check("DELETE", &format!("{p}/c?if_mod_revision=1&if_version=1"), None, 409).await;
    tour.check("DELETE", &format!("{p}/c"), None, 200).await;

    // Watches: a replay of known revisions in both framings, filters, a resume, a single
    // key, a watch from now, the next revision, and refusals before the stream.
    let w = "/openapi-sync/watch";
    let js = |v: Value| Some(serde_json::to_vec(&v).expect("JSON"));
    let rev = |r: &Reply| r.json()["revision"].as_u64().unwrap_or(0);
    let r1 = rev(&tour.check("PUT", &format!("/v1/kv{w}/a"), js(json!({"value": "1"})), 200).await);
    let r2 =
        rev(&tour.check("PUT", &format!("/v1/kv{w}/b"), js(json!({"value_base64": "3q2+7w=="})), 200).await);
    let r3 = rev(&tour.check("PUT", &format!("/v1/kv{w}/a"), js(json!({"value": "2"})), 200).await);
    let txn = json!({"success": [{"put": {"key": format!("{w}/c"), "value": "3"}}, {"delete": {"key": format!("{w}/b")}}]});
    let r4 = rev(&tour.check("POST", "/v1/txn", js(txn), 200).await);
    let r5 = rev(&tour.check("DELETE", &format!("/v1/kv{w}?recursive"), None, 200).await);
    // (revision, [(type, key, has prev_kv)]) of each change message.
    type Change = (u64, Vec<(String, String, bool)>);
    let changes = |r: &Reply| -> Vec<Change> {
        r.messages()
            .iter()
            .map(|m| {
                let events = m.data["events"].as_array().cloned().unwrap_or_default();
                let events = events
                    .iter()
                    .map(|e| {
                        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                        (s(&e["type"]), s(&e["kv"]["key"]), e.get("prev_kv").is_some())
                    })
                    .collect();
                (m.data["revision"].as_u64().unwrap_or(0), events)
            })
            .collect()
    };
    let ev = |t: &str, k: &str, prev: bool| (t.to_string(), format!("{w}/{k}"), prev);
    let replay = vec![
        (r1, vec![ev("put", "a", false)]),
        (r2, vec![ev("put", "b", false)]),
        (r3, vec![ev("put", "a", true)]),
        (r4, vec![ev("delete", "b", true), ev("put", "c", false)]),
        (r5, vec![ev("delete", "a", true), ev("delete", "c", true)]),
    ];
    let ndjson = [("accept", "application/x-ndjson")];
    for headers in [&[][..], &ndjson[..]] {
        let uri = format!("/v1/watch{w}?recursive&start_revision={r1}&prev_kv");
        let s = tour.stream(&uri, headers, 5, 200).await;
        tour.expect(
            changes(&s) == replay && !s.ended,
            &s,
            "a replay: one message per revision, in key order",
        );
        let media = if headers.is_empty() { "text/event-stream" } else { "application/x-ndjson" };
        tour.expect(s.media_type() == media, &s, "the framing the Accept header asks for");
        let deleted = s.messages().get(4).map(|m| m.data["events"][0]["kv"].clone());
        tour.expect(
            deleted == Some(json!({"key": format!("{w}/a"), "mod_revision": r5})),
            &s,
            "a delete's kv is its key and revision",
        );
    }
    let s = tour
        .stream(
            &format!("/v1/watch{w}?recursive&start_revision={r1}&types=delete&prev_kv=false"),
            &[],
            2,
            200,
        )
        .await;
    tour.expect(
        changes(&s)
            == vec![
                (r4, vec![ev("delete", "b", false)]),
                (r5, vec![ev("delete", "a", false), ev("delete", "c", false)]),
            ],
        &s,
        "types=delete",
    );
    let s = tour.stream(&format!("/v1/watch{w}?recursive&types=put&start_revision={r2}"), &[], 3, 200).await;
    tour.expect(changes(&s).iter().map(|c| c.0).collect::<Vec<_>>() == [r2, r3, r4], &s, "types=put");
    let last_id = r3.to_string();
    let s = tour
        .stream(
            &format!("/v1/watch{w}?recursive&start_revision={r1}"),
            &[("last-event-id", &last_id)],
            1,
            200,
        )
        .await;
    tour.expect(changes(&s).first().map(|c| c.0) == Some(r4), &s, "Last-Event-ID resumes after its revision");
    let s = tour
        .stream(&format!("/v1/watch{w}/a?start_revision={r1}&consistency=serializable"), &[], 3, 200)
        .await;
    tour.expect(changes(&s).iter().map(|c| c.0).collect::<Vec<_>>() == [r1, r3, r5], &s, "a single key");
    for (uri, headers) in [
        (format!("/v1/watch{w}?recursive"), &[][..]),
        (format!("/v1/watch{w}/a"), &ndjson[..]),
        (
            format!("/v1/watch{w}?recursive=true&progress=100ms&types=put,delete&consistency=linearizable"),
            &[][..],
        ),
        ("/v1/watch/?recursive".to_string(), &ndjson[..]),
        ("/v1/watch?recursive&consistency=serializable".to_string(), &[][..]),
        (format!("/v1/watch{w}?progress=1.5&types=delete,put"), &[("accept", "text/event-stream")][..]),
    ] {
        let s = tour.stream(&uri, headers, 1, 200).await;
        let first = s.messages().first().map(|m| m.data["progress"]["revision"].clone());
        tour.expect(
            !s.ended
                && first.is_some_and(|r| {
                    r.as_u64().is_some() && r.as_u64() == s.header_u64("x-palisade-revision")
                }),
            &s,
            "a watch from now begins with progress at X-Palisade-Revision",
        );
    }
    // The next revision: nothing until it happens.
    let next_rev =
        tour.check("GET", "/v1/cluster", None, 200).await.json()["revision"].as_u64().unwrap_or(0) + 1;
    let s = tour
        .stream_for(
            &format!("/v1/watch{w}?recursive&start_revision={next_rev}"),
            &[],
            1,
            Duration::from_millis(200),
            200,
        )
        .await;
    tour.expect(s.body.is_empty() && !s.ended, &s, "a watch from the next revision waits");
    let s = tour
        .stream(&format!("/v1/watch{w}?recursive&progress=100ms&start_revision={next_rev}"), &[], 1, 200)
        .await;
    tour.expect(
        s.messages().first().map(|m| m.data["progress"]["revision"].clone()) == Some(json!(next_rev - 1)),
        &s,
        "progress after the interval",
    );
    let future = tour.check("GET", &format!("/v1/watch{w}?start_revision={}", next_rev + 1), None, 400).await;
    tour.expect(
        future.error_code().as_deref() == Some("future_revision")
            && future.json()["error"]["revision"] == next_rev - 1,
        &future,
        "a start past the next revision",
    );
    let head = (next_rev - 1).to_string();
    let s = tour
        .stream_for(&format!("/v1/watch{w}"), &[("last-event-id", &head)], 1, Duration::from_millis(100), 200)
        .await;
    tour.expect(s.body.is_empty() && !s.ended, &s, "a resume from the current revision waits");
    let past = next_rev.to_string();
    let e = tour.check_with("GET", &format!("/v1/watch{w}"), &[("last-event-id", &past)], None, 400).await;
    tour.expect(e.error_code().as_deref() == Some("future_revision"), &e, "Last-Event-ID in the future");
    tour.check_with("GET", &format!("/v1/watch{w}"), &[("last-event-id", "forty")], None, 400).await;
    for bad in [
        "?recurisve",
        "?recursive=maybe",
        "?recursive&recursive",
        "?start_revision=0",
        "?start_revision=-1",
        "?start_revision=x",
        "?types=",
        "?types=update",
        "?types=put,",
        "?progress=50ms",
        "?progress=2h",
        "?progress=2x",
        "?progress=0",
        "?consistency=eventual",
        "?prev_kv=2",
    ] {
        let e = tour.check("GET", &format!("/v1/watch{w}{bad}"), None, 400).await;
        tour.expect(e.error_code().as_deref() == Some("invalid_argument"), &e, "a bad watch parameter");
    }
    for bad in ["/v1/watch/openapi-sync//x", "/v1/watch/openapi-sync/x/", "/v1/watch/a/../b", "/v1/watch/%FF"]
    {
        let e = tour.check("GET", bad, None, 400).await;
        tour.expect(e.error_code().as_deref() == Some("invalid_key"), &e, "a bad key to watch");
    }

    // Long-polls: changed already, woken by a write, timed out, a missing key, listings,
    // and refusals.
    let lp = "/openapi-sync/lp";
    let l1 = rev(&tour.check("PUT", &format!("/v1/kv{lp}/a"), js(json!({"value": "1"})), 200).await);
    let l2 = rev(&tour.check("PUT", &format!("/v1/kv{lp}/a"), js(json!({"value": "2"})), 200).await);
    let v = tour.check("GET", &format!("/v1/kv{lp}/a?wait&after_revision={l1}"), None, 200).await;
    tour.expect(
        v.json()["changed"] == true && v.json()["kv"]["value"] == "2" && rev(&v) == l2,
        &v,
        "a long-poll of a key that changed already",
    );
    let v =
        tour.check("GET", &format!("/v1/kv{lp}/a?wait&after_revision={l2}&timeout=100ms"), None, 200).await;
    tour.expect(v.json()["changed"] == false && v.json()["kv"]["value"] == "2", &v, "a long-poll times out");
    let v = tour.check("GET", &format!("/v1/kv{lp}/none?wait=true&timeout=50ms"), None, 200).await;
    tour.expect(
        v.json()["changed"] == false && v.json()["kv"].is_null(),
        &v,
        "a missing key is null, not 404",
    );
    let poll = format!("/v1/kv{lp}?recursive&wait=1&after_revision={l2}&timeout=30s&limit=1");
    let (woken, put) = tokio::join!(send(tour.router, "GET", &poll, None), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        send(tour.router, "DELETE", &format!("/v1/kv{lp}/a"), None).await
    });
    conform(tour.spec, &woken, tour.errs);
    conform(tour.spec, &put, tour.errs);
    let l3 = rev(&put);
    tour.expect(
        woken.status == StatusCode::OK
            && woken.json()["changed"] == true
            && rev(&woken) == l3
            && woken.json()["count"] == 0,
        &woken,
        "a write wakes a long-poll of a subtree",
    );
    let v = tour
        .check("GET", &format!("/v1/kv{lp}/a?wait&after_revision={l2}&consistency=serializable"), None, 200)
        .await;
    tour.expect(v.json()["changed"] == true && v.json()["kv"].is_null(), &v, "a deleted key: changed, null");
    tour.check("PUT", &format!("/v1/kv{lp}/b"), js(json!({"value": "b"})), 200).await;
    let v = tour
        .check("GET", &format!("/v1/kv{lp}?recursive&keys_only&wait&after_revision={l3}"), None, 200)
        .await;
    tour.expect(v.json()["changed"] == true && v.json()["kvs"][0].get("value").is_none(), &v, "keys_only");
    let v = tour.check("GET", &format!("/v1/kv{lp}?recursive&count_only&wait&timeout=20ms"), None, 200).await;
    tour.expect(v.json()["changed"] == false && v.json()["count"] == 1, &v, "a count long-poll");
    let v = tour
        .check("GET", &format!("/v1/kv{lp}?children&limit=5&wait&after_revision=0&timeout=1.5"), None, 200)
        .await;
    tour.expect(
        v.json()["changed"] == true && v.json()["children"][0]["name"] == "b",
        &v,
        "a children long-poll",
    );
    tour.check("GET", "/v1/kv/?children&wait&timeout=10ms", None, 200).await;
    tour.check("GET", "/v1/kv?recursive&count_only&wait&timeout=10ms&consistency=serializable", None, 200)
        .await;
    let far = tour.check("GET", &format!("/v1/kv{lp}/a?wait&after_revision={}", l3 + 1000), None, 400).await;
    tour.expect(far.error_code().as_deref() == Some("future_revision"), &far, "after_revision in the future");
    for bad in [
        "/a?wait&timeout=0",
        "/a?wait&timeout=11m",
        "/a?wait&timeout=600001ms",
        "/a?wait&timeout=soon",
        "/a?wait&timeout=0.0001",
        "/a?wait&after_revision=x",
        "/a?wait&revision=1",
        "/a?wait&raw",
        "?recursive&wait&after=NDI6L2E",
        "/a?after_revision=1",
        "/a?timeout=1s",
        "/a?wait=false&timeout=1s",
        "/a?wait=soon",
        "/a?wait&wait",
    ] {
        let e = tour.check("GET", &format!("/v1/kv{lp}{bad}"), None, 400).await;
        tour.expect(e.error_code().as_deref() == Some("invalid_argument"), &e, "a bad long-poll");
    }
    // The root is not a key, long-poll or not: refused at once, not after the timeout.
    match tokio::time::timeout(Duration::from_secs(5), send(tour.router, "GET", "/v1/kv/?wait", None)).await {
        Ok(e) => {
            conform(tour.spec, &e, tour.errs);
            tour.expect(
                e.error_code().as_deref() == Some("invalid_key"),
                &e,
                "a long-poll of the root as a key",
            );
        }
        Err(_) => tour.errs.push("GET /v1/kv/?wait: not refused at once (the root is not a key)".into()),
    }

    // Sequential keys.
    let q = "/v1/kv/openapi-sync/queue";
    let v = || Some(br#"{"value":"job"}"#.to_vec());
    let s1 = tour.check("POST", &format!("{q}?sequential"), v(), 201).await;
    let s2 = tour
        .check("POST", &format!("{q}?sequential=true"), Some(br#"{"value_base64":"3q2+7w=="}"#.to_vec()), 201)
        .await;
    let (k1, k2) = (s1.json()["kv"]["key"].clone(), s2.json()["kv"]["key"].clone());
    let seq = |k: &Value| {
        k.as_str()
            .and_then(|k| k.strip_prefix("/openapi-sync/queue/"))
            .is_some_and(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
    };
    tour.expect(
        seq(&k1) && seq(&k2) && k1.as_str() < k2.as_str(),
        &s2,
        "sequential names: 20 digits, increasing",
    );
    let root = tour.check("POST", "/v1/kv/?sequential", v(), 201).await;
    tour.expect(
        root.json()["kv"]["key"].as_str().is_some_and(|k| k.len() == 21),
        &root,
        "a child of the root",
    );
    tour.check("POST", q, v(), 400).await;
    tour.check("POST", &format!("{q}?sequential=false"), v(), 400).await;
    tour.check("POST", &format!("{q}?sequential&prev_kv"), v(), 400).await;
    tour.check("POST", &format!("{q}?sequential"), Some(Vec::new()), 400).await;
    tour.check("POST", &format!("{q}?sequential"), Some(br#"{"value":"x","bogus":1}"#.to_vec()), 400).await;
    tour.check("POST", &format!("{q}?sequential"), Some(br#"{"value":"x","lease":3}"#.to_vec()), 404).await;
    tour.check("POST", "/v1/kv/openapi-sync//q?sequential", v(), 400).await;

    // Transactions.
    let t = "/openapi-sync/txn";
    let body = |v: Value| Some(serde_json::to_vec(&v).expect("JSON"));
    let create = json!({
        "compare": [{"key": format!("{t}/a"), "target": "version", "op": "==", "value": 0}],
        "success": [
            {"put": {"key": format!("{t}/a"), "value": "1"}},
            {"put": {"key": t, "value": "s", "sequential": true}},
            {"get": {"key": t, "recursive": true, "limit": 1, "keys_only": true}},
        ],
        "failure": [{"get": {"key": format!("{t}/a")}}],
    });
    let first = tour.check("POST", "/v1/txn", body(create.clone()), 200).await;
    let results = first.json()["results"].clone();
    tour.expect(
        first.json()["succeeded"] == true
            && results[1]["put"]["key"].as_str().is_some_and(|k| k.len() == t.len() + 21)
            && results[2]["get"]["more"] == true,
        &first,
        "a transaction that creates",
    );
    let again = tour.check("POST", "/v1/txn", body(create), 200).await;
    tour.expect(
        again.json()["succeeded"] == false && again.json()["results"][0]["get"]["kvs"][0]["value"] == "1",
        &again,
        "the failure branch",
    );
    let swap = json!({
        "compare": [{"key": format!("{t}/a"), "target": "value", "op": "==", "value_base64": "MQ=="}],
        "success": [
            {"put": {"key": format!("{t}/a"), "value_base64": "/wCA", "prev_kv": true}},
            {"delete": {"key": format!("{t}/b"), "recursive": true, "prev_kv": true}},
        ],
    });
    let swapped = tour.check("POST", "/v1/txn", body(swap), 200).await;
    tour.expect(
        swapped.json()["results"][0]["put"]["prev_kv"]["value"] == "1"
            && swapped.json()["results"][1]["delete"]["deleted"] == 0,
        &swapped,
        "prev_kv in a transaction",
    );
    let gone = json!({"success": [{"delete": {"key": t, "recursive": true, "prev_kv": true}}]});
    let gone = tour.check("POST", "/v1/txn", body(gone), 200).await;
    tour.expect(
        gone.json()["results"][0]["delete"]["deleted"] == 2,
        &gone,
        "a recursive delete in a transaction",
    );
    tour.check("POST", "/v1/txn", body(json!({})), 200).await;
    let put = |k: &str| json!({"put": {"key": k, "value": "x"}});
    for bad in [
        json!({"success": [put("/openapi-sync/t/a"), {"delete": {"key": "/openapi-sync/t/a"}}]}),
        json!({"failure": [{"delete": {"key": "/openapi-sync/t", "recursive": true}}, put("/openapi-sync/t/a")]}),
        json!({"compare": [{"lock": "db", "target": "fence", "op": "<", "value": 1}]}),
        json!({"compare": [{"key": "/db", "target": "fence", "op": "==", "value": 1}]}),
        json!({"compare": [{"lock": "a/b", "target": "fence", "op": "==", "value": 1}]}),
        json!({"compare": [{"lock": "db", "target": "version", "op": "==", "value": 1}]}),
        json!({"compare": [{"key": "/a", "target": "version", "op": "==", "value": "1"}]}),
        json!({"compare": [{"key": "/a", "target": "value", "op": "<=", "value": "1"}]}),
        json!({"success": [{"get": {"key": "/a", "limit": 5}}]}),
        json!({"success": [{"put": {"key": "/a", "value": "x", "sequential": true, "prev_kv": true}}]}),
        json!({"success": [put("/")]}),
        json!({"success": [{"frob": {"key": "/a"}}]}),
        json!({"bogus": []}),
        json!({"success": (0..129).map(|i| put(&format!("/openapi-sync/many/{i}"))).collect::<Vec<_>>()}),
        json!({"compare": (0..129).map(|_| json!({"key": "/a", "target": "version", "op": ">", "value": 0})).collect::<Vec<_>>()}),
    ] {
        tour.check("POST", "/v1/txn", body(bad), 400).await;
    }
    tour.check("POST", "/v1/txn", Some(Vec::new()), 400).await;
    tour.check("POST", "/v1/txn?x=1", body(json!({})), 400).await;
    tour.check(
        "POST",
        "/v1/txn",
        body(json!({"success": [{"put": {"key": "/a", "value": "x", "lease": 9}}]})),
        404,
    )
    .await;

    // Idempotency keys.
    let ik = |k: &'static str| [("idempotency-key", k)];
    let replayed = |r: &Reply| r.headers.get("idempotent-replayed").is_some_and(|v| v == "true");
    let i = &format!("{p}/idem");
    let w1 = tour.check_with("PUT", i, &ik("openapi-sync-1"), v(), 200).await;
    let w2 = tour.check_with("PUT", i, &ik("openapi-sync-1"), v(), 200).await;
    tour.expect(!replayed(&w1) && replayed(&w2) && w1.json() == w2.json(), &w2, "a replayed PUT");
    tour.check_with("PUT", i, &ik("openapi-sync-1"), Some(br#"{"value":"other"}"#.to_vec()), 422).await;
    tour.check_with("DELETE", i, &ik("openapi-sync-1"), None, 422).await;
    tour.check_with("PUT", i, &ik("has space"), v(), 400).await;
    tour.check_with("PUT", i, &[("idempotency-key", &"k".repeat(129))], v(), 400).await;
    tour.check_with("PUT", i, &[("idempotency-key", "a"), ("idempotency-key", "b")], v(), 400).await;
    let c1 = tour.check_with("PUT", &format!("{i}?if_version=7"), &ik("openapi-sync-2"), v(), 409).await;
    let c2 = tour.check_with("PUT", &format!("{i}?if_version=7"), &ik("openapi-sync-2"), v(), 409).await;
    tour.expect(!replayed(&c1) && replayed(&c2), &c2, "a replayed 409");
    let s1 = tour.check_with("POST", &format!("{q}?sequential"), &ik("openapi-sync-3"), v(), 201).await;
    let s2 = tour.check_with("POST", &format!("{q}?sequential"), &ik("openapi-sync-3"), v(), 201).await;
    tour.expect(replayed(&s2) && s1.json() == s2.json(), &s2, "a replayed sequential create");
    let tx = json!({"success": [put("/openapi-sync/idem-txn")]});
    tour.check_with("POST", "/v1/txn", &ik("openapi-sync-4"), body(tx.clone()), 200).await;
    let t2 = tour.check_with("POST", "/v1/txn", &ik("openapi-sync-4"), body(tx), 200).await;
    tour.expect(replayed(&t2), &t2, "a replayed transaction");
    let d1 = tour.check_with("DELETE", i, &ik("openapi-sync-5"), None, 200).await;
    let d2 = tour.check_with("DELETE", i, &ik("openapi-sync-5"), None, 200).await;
    tour.expect(replayed(&d2) && d1.json() == d2.json(), &d2, "a replayed DELETE");

    // Compaction, and history below the floor.
    let cluster = tour.check("GET", "/v1/cluster", None, 200).await;
    let current = cluster.json()["revision"].as_u64().unwrap_or(0);
    let compact = |r: u64| body(json!({ "revision": r }));
    let done = tour
        .check_with("POST", "/v1/maintenance/compact", &ik("openapi-sync-6"), compact(current), 200)
        .await;
    tour.expect(
        done.json()["compact_revision"] == current,
        &done,
        "the floor moves to the revision asked for",
    );
    let again = tour
        .check_with("POST", "/v1/maintenance/compact", &ik("openapi-sync-6"), compact(current), 200)
        .await;
    tour.expect(replayed(&again), &again, "a replayed compaction");
    let lower = tour.check("POST", "/v1/maintenance/compact", compact(1), 200).await;
    tour.expect(
        lower.json()["compact_revision"] == current,
        &lower,
        "compacting below the floor changes nothing",
    );
    let future = tour.check("POST", "/v1/maintenance/compact", compact(current + 1000), 400).await;
    tour.expect(future.error_code().as_deref() == Some("future_revision"), &future, "future_revision");
    tour.check("POST", "/v1/maintenance/compact", body(json!({})), 400).await;
    tour.check("POST", "/v1/maintenance/compact", body(json!({"revision": -1})), 400).await;
    tour.check("POST", "/v1/maintenance/compact", body(json!({"revision": 1, "x": 1})), 400).await;
    tour.check("POST", "/v1/maintenance/compact?x", compact(1), 400).await;
    tour.check("POST", "/v1/maintenance/compact", Some(b"[".to_vec()), 400).await;
    // A backup: a snapshot file of the state as of now.
    let snap = tour.check("GET", "/v1/maintenance/snapshot", None, 200).await;
    tour.expect(
        snap.body.starts_with(b"PALSNAP\0") && snap.body.len() > 64,
        &snap,
        "a snapshot file (header, payload, trailer)",
    );
    tour.check("GET", "/v1/maintenance/snapshot?x", None, 400).await;
    let old = tour.check("GET", &format!("{p}/a?revision={first_rev}"), None, 410).await;
    tour.expect(old.json()["error"]["compact_revision"] == current, &old, "410 names the floor");
    tour.check("GET", &format!("{p}?recursive&after={next}"), None, 410).await;
    tour.check("GET", &format!("{p}?children&revision={first_rev}"), None, 410).await;

    // Below the floor: a watch says `compacted` in its stream and ends; a long-poll is 410.
    for headers in [&[][..], &ndjson[..]] {
        let s = tour.stream(&format!("/v1/watch{w}?recursive&start_revision=1"), headers, 2, 200).await;
        let m = s.messages();
        tour.expect(
            s.ended && m.len() == 1 && m[0].data == json!({"compacted": {"compact_revision": current}}),
            &s,
            "a watch from below the floor: compacted, then the end",
        );
    }
    let s = tour.stream(&format!("/v1/watch{w}/a"), &[("last-event-id", "1")], 2, 200).await;
    tour.expect(s.ended && s.messages().len() == 1, &s, "a resume from below the floor");
    let s = tour
        .stream_for(
            &format!("/v1/watch{w}?start_revision={current}"),
            &[],
            1,
            Duration::from_millis(100),
            200,
        )
        .await;
    tour.expect(!s.ended && s.body.is_empty(), &s, "a watch from the floor goes on");
    let gone = tour.check("GET", &format!("/v1/kv{lp}/a?wait&after_revision=0"), None, 410).await;
    tour.expect(gone.json()["error"]["compact_revision"] == current, &gone, "a long-poll below the floor");
    tour.check("GET", &format!("/v1/kv{lp}/a?wait&after_revision={}&timeout=10ms", current - 1), None, 200)
        .await;

    let cluster = tour.check("GET", "/v1/cluster", None, 200).await;
    let c = cluster.json();
    tour.expect(c["leader"] == 1, &cluster, "a one-node cluster leads itself");
    tour.expect(
        c["quota_bytes"] == QUOTA
            && c["store_bytes"].as_u64().is_some_and(|b| b > 0)
            && c["idempotency_keys"] == 6,
        &cluster,
        "store and idempotency figures",
    );
    tour.check("GET", "/healthz", None, 200).await;
    tour.check("GET", "/readyz", None, 200).await;
    let m = tour.check("GET", "/metrics", None, 200).await;
    let text = String::from_utf8_lossy(&m.body).to_string();
    tour.expect(
        text.contains("palisade_store_revision ")
            && text.contains(
                "palisade_http_requests_total{method=\"GET\",route=\"/v1/cluster\",status=\"200\"}",
            )
            && text.ends_with("# EOF\n"),
        &m,
        "the exposition counts the tour's requests and shows the state",
    );
    tour.check("GET", "/metrics?verbose", None, 400).await;

    // Leases: grants, keys under leases, keepalives, reads, listings, revokes, the cap.
    let lease_stats = |r: &Reply| r.json()["leases"].clone();
    let before = lease_stats(&tour.check("GET", "/v1/cluster", None, 200).await);
    let g = tour.check("POST", "/v1/leases", body(json!({"ttl": "1h"})), 201).await;
    let l1 = g.json()["id"].as_u64().unwrap_or(0);
    tour.expect(g.json()["ttl_ms"] == 3_600_000 && l1 > 0, &g, "a grant, its id picked by the cluster");
    let g = tour.check("POST", "/v1/leases", body(json!({"ttl": 90.5, "id": 4000})), 201).await;
    tour.expect(
        g.json() == json!({"id": 4000, "ttl_ms": 90_500}),
        &g,
        "a grant under an id, the TTL in seconds",
    );
    let dup = tour.check("POST", "/v1/leases", body(json!({"ttl": "10s", "id": 4000})), 409).await;
    tour.expect(dup.error_code().as_deref() == Some("lease_exists"), &dup, "an id in use");
    for ttl in [
        json!("10"),
        json!("0s"),
        json!("1s"),
        json!("1999ms"),
        json!("25h"),
        json!("1.5ms"),
        json!("-1s"),
        json!("1e3s"),
        json!(" 10s"),
        json!("10S"),
        json!(".5s"),
        json!(-1),
        json!(0),
        json!(1.0005),
        json!(1e300),
        json!(null),
        json!(true),
        json!(["10s"]),
    ] {
        let bad = tour.check("POST", "/v1/leases", body(json!({ "ttl": ttl })), 400).await;
        tour.expect(bad.error_code().as_deref() == Some("invalid_argument"), &bad, "a bad TTL");
    }
    for bad in [
        json!({}),
        json!({"id": 5}),
        json!({"ttl": "10s", "id": 0}),
        json!({"ttl": "10s", "id": 9_007_199_254_740_992u64}),
        json!({"ttl": "10s", "id": -1}),
        json!({"ttl": "10s", "id": 1.5}),
        json!({"ttl": "10s", "id": "5"}),
        json!({"ttl": "10s", "bogus": 1}),
    ] {
        tour.check("POST", "/v1/leases", body(bad), 400).await;
    }
    tour.check("POST", "/v1/leases", Some(Vec::new()), 400).await;
    tour.check("POST", "/v1/leases", Some(b"[".to_vec()), 400).await;
    tour.check("POST", "/v1/leases?x=1", body(json!({"ttl": "10s"})), 400).await;
    let i1 = tour
        .check_with("POST", "/v1/leases", &ik("openapi-sync-lease-1"), body(json!({"ttl": "1m"})), 201)
        .await;
    let i2 = tour
        .check_with("POST", "/v1/leases", &ik("openapi-sync-lease-1"), body(json!({"ttl": "1m"})), 201)
        .await;
    tour.expect(!replayed(&i1) && replayed(&i2) && i1.json() == i2.json(), &i2, "a replayed grant");
    tour.check_with("POST", "/v1/leases", &ik("openapi-sync-lease-1"), body(json!({"ttl": "2m"})), 422).await;

    let lk = "/v1/kv/openapi-sync/leased";
    let put = tour.check("PUT", &format!("{lk}/a"), body(json!({"value": "1", "lease": l1})), 200).await;
    tour.expect(put.json()["kv"]["lease"] == l1, &put, "a key under a lease");
    tour.check("POST", &format!("{lk}?sequential"), body(json!({"value": "2", "lease": l1})), 201).await;
    let put_b = json!({"success": [{"put": {"key": "/openapi-sync/leased/b", "value": "3", "lease": 4000}}]});
    tour.check("POST", "/v1/txn", body(put_b), 200).await;
    tour.check("PUT", &format!("{lk}/c"), body(json!({"value": "x", "lease": 0})), 400).await;
    tour.check(
        "PUT",
        &format!("{lk}/c"),
        body(json!({"value": "x", "lease": 9_007_199_254_740_992u64})),
        400,
    )
    .await;
    let missing = body(json!({"value": "x", "lease": 777_777}));
    let n1 =
        tour.check_with("PUT", &format!("{lk}/c"), &ik("openapi-sync-lease-2"), missing.clone(), 404).await;
    let n2 = tour.check_with("PUT", &format!("{lk}/c"), &ik("openapi-sync-lease-2"), missing, 404).await;
    tour.expect(!replayed(&n1) && replayed(&n2), &n2, "a replayed lease_not_found of a put");
    let txn_missing =
        json!({"success": [{"put": {"key": "/openapi-sync/leased/c", "value": "x", "lease": 777_777}}]});
    tour.check("POST", "/v1/txn", body(txn_missing), 404).await;
    tour.check("GET", &format!("{lk}/c"), None, 404).await;

    let k = tour.check("POST", &format!("/v1/leases/{l1}/keepalive"), None, 200).await;
    let left = k.json()["remaining_ms"].as_u64().unwrap_or(0);
    tour.expect(
        k.json()["id"] == l1 && k.json()["ttl_ms"] == 3_600_000 && left > 0 && left <= 3_600_000,
        &k,
        "a keepalive",
    );
    tour.check("POST", "/v1/leases/777777/keepalive", None, 404).await;
    tour.check("POST", "/v1/leases/0/keepalive", None, 400).await;
    tour.check("POST", "/v1/leases/9007199254740992/keepalive", None, 400).await;
    tour.check("POST", "/v1/leases/x/keepalive", None, 400).await;
    tour.check("POST", &format!("/v1/leases/{l1}/keepalive?x=1"), None, 400).await;
    let one = tour.check("GET", &format!("/v1/leases/{l1}"), None, 200).await;
    tour.expect(
        one.json()["key_count"] == 2
            && one.json()["keys"]
                .as_array()
                .is_some_and(|k| k.len() == 2 && k[1] == "/openapi-sync/leased/a"),
        &one,
        "a lease and its keys",
    );
    tour.check("GET", "/v1/leases/777777", None, 404).await;
    tour.check("GET", "/v1/leases/0", None, 400).await;
    tour.check("GET", "/v1/leases/-1", None, 400).await;
    tour.check("GET", &format!("/v1/leases/{l1}?keys=1"), None, 400).await;

    let all = tour.check("GET", "/v1/leases", None, 200).await;
    let total = all.json()["count"].as_u64().unwrap_or(0);
    let page = tour.check("GET", "/v1/leases?limit=1", None, 200).await;
    let next = page.json()["next"].clone();
    tour.expect(
        page.json()["more"] == true && page.json()["count"] == 1 && next == page.json()["leases"][0]["id"],
        &page,
        "a first page of leases",
    );
    let rest = tour.check("GET", &format!("/v1/leases?limit=10000&after={next}"), None, 200).await;
    tour.expect(
        rest.json()["more"] == false
            && rest.json().get("next").is_none()
            && rest.json()["count"].as_u64() == Some(total - 1)
            && total >= 4,
        &rest,
        "the rest of the leases",
    );
    tour.check("GET", "/v1/leases?limit=0", None, 400).await;
    tour.check("GET", "/v1/leases?limit=10001", None, 400).await;
    tour.check("GET", "/v1/leases?after=x", None, 400).await;
    tour.check("GET", "/v1/leases?limit=1&limit=2", None, 400).await;

    let r1 =
        tour.check_with("DELETE", &format!("/v1/leases/{l1}"), &ik("openapi-sync-lease-3"), None, 200).await;
    let r2 =
        tour.check_with("DELETE", &format!("/v1/leases/{l1}"), &ik("openapi-sync-lease-3"), None, 200).await;
    tour.expect(r1.json()["id"] == l1 && r1.json()["deleted"] == 2, &r1, "a revoke deletes the lease's keys");
    tour.expect(replayed(&r2) && r1.json() == r2.json(), &r2, "a replayed revoke");
    tour.check("GET", &format!("{lk}/a"), None, 404).await;
    let gone = tour.check("DELETE", &format!("/v1/leases/{l1}"), None, 404).await;
    tour.expect(gone.error_code().as_deref() == Some("lease_not_found"), &gone, "a revoked lease is gone");
    tour.check("POST", &format!("/v1/leases/{l1}/keepalive"), None, 404).await;
    tour.check("GET", &format!("/v1/leases/{l1}"), None, 404).await;
    tour.check("DELETE", "/v1/leases/0", None, 400).await;
    tour.check("DELETE", "/v1/leases/4000?x", None, 400).await;
    tour.check_with("DELETE", "/v1/leases/4000", &ik("has space"), None, 400).await;
    tour.check_with("DELETE", "/v1/leases/4000", &ik("openapi-sync-lease-1"), None, 422).await;
    let revoked = tour.check("DELETE", "/v1/leases/4000", None, 200).await;
    tour.expect(revoked.json()["deleted"] == 1, &revoked, "the key a transaction put under the lease");

    // Past --max-leases, a grant is 507.
    let mut granted = 0;
    let mut capped = None;
    for _ in 0..=MAX_LEASES {
        let reply = send(tour.router, "POST", "/v1/leases", body(json!({"ttl": "1h"}))).await;
        conform(tour.spec, &reply, tour.errs);
        if reply.status == StatusCode::CREATED {
            granted += 1;
        } else {
            capped = Some(reply);
            break;
        }
    }
    match capped {
        Some(c) => tour.expect(
            c.status == StatusCode::INSUFFICIENT_STORAGE
                && c.error_code().as_deref() == Some("quota_exceeded"),
            &c,
            "a grant past --max-leases",
        ),
        None => tour
            .errs
            .push(format!("{} grants past --max-leases {MAX_LEASES} were all granted", MAX_LEASES + 1)),
    }
    let after = lease_stats(&tour.check("GET", "/v1/cluster", None, 200).await);
    let delta = |f: &str| after[f].as_u64().unwrap_or(0).saturating_sub(before[f].as_u64().unwrap_or(0));
    if (delta("granted"), delta("revoked")) != (3 + granted, 2)
        || after["alive"].as_u64().is_none_or(|a| a > MAX_LEASES)
    {
        tour.errs
            .push(format!("lease counters: before {before}, after {after}, {granted} granted in the loop"));
    }

    // 4. What the spec does not list is a route miss (404 not_found or 405), documented
    // by the shared responses.
    let in_spec = spec_operations(&spec);
    let misses = [
        ("PATCH", "/v1/kv/a"),
        ("GET", "/v1/txn"),
        ("PUT", "/v1/txn"),
        ("GET", "/v1/maintenance/compact"),
        ("POST", "/v1/maintenance/snapshot"),
        ("PATCH", "/v1/kv/a/b"),
        ("OPTIONS", "/v1/kv/a"),
        ("POST", "/v1/cluster"),
        ("DELETE", "/healthz"),
        ("PUT", "/readyz"),
        ("GET", "/v1/nope"),
        ("GET", "/v1/kvx/a"),
        ("GET", "/v2/kv/a"),
        ("GET", "/"),
        ("POST", "/raft/rpc"),
        ("PUT", "/v1/leases"),
        ("GET", "/v1/leases/"),
        ("POST", "/v1/leases/7"),
        ("GET", "/v1/leases/7/keepalive"),
        ("DELETE", "/v1/leases/7/keepalive"),
        ("GET", "/v1/leases/7/x"),
    ];
    for (method, uri) in misses {
        let listed = template_of(&spec, uri).is_some_and(|t| in_spec.contains(&(method.to_string(), t)));
        assert!(!listed, "{method} {uri} is in the spec; pick another miss");
        let reply = send(r, method, uri, None).await;
        if !reply.route_miss() {
            errs.push(format!(
                "{method} {uri} is not in the spec, but the router serves it: {}",
                reply.describe()
            ));
            continue;
        }
        let (name, code) = if reply.status == StatusCode::METHOD_NOT_ALLOWED {
            ("MethodNotAllowed", "method_not_allowed")
        } else {
            ("RouteNotFound", "not_found")
        };
        if reply.error_code().as_deref() != Some(code) {
            errs.push(format!("a route miss should have code {code}: {}", reply.describe()));
        }
        conform_to(&spec, &spec["components"]["responses"][name], &reply, &mut errs);
    }

    // 5. Membership: refusals of every kind, then a learner added, moved and removed
    // (the sample member 4 was added, moved and removed above: its id is retired).
    let mut tour = Tour { spec: &spec, router: r, errs: &mut errs };
    let body = |v: Value| Some(serde_json::to_vec(&v).unwrap());
    let away = format!("http://127.0.0.1:{}", free_port());
    let add =
        |id: u64, peer: &str| body(json!({"id": id, "peer_url": peer, "client_url": "http://127.0.0.1:1"}));
    let m = "/v1/cluster/members";
    for (b, code) in [
        (add(0, &away), "invalid_argument"),
        (add(5, "ftp://x:1"), "invalid_argument"),
        (body(json!({"id": 5, "peer_url": away})), "invalid_argument"),
        (body(json!({"id": 5, "peer_url": away, "client_url": "http://a:1", "x": 1})), "invalid_argument"),
        (Some(b"{".to_vec()), "invalid_json"),
    ] {
        let r = tour.check("POST", m, b, 400).await;
        tour.expect(r.error_code().as_deref() == Some(code), &r, code);
    }
    for (b, code) in [(add(1, &away), "member_exists"), (add(4, &away), "member_id_retired")] {
        let r = tour.check("POST", m, b, 409).await;
        tour.expect(r.error_code().as_deref() == Some(code), &r, code);
    }
    let added = tour.check("POST", m, add(6, &away), 201).await;
    tour.expect(added.json()["role"] == "learner", &added, "a learner is added");
    let behind = tour.check("POST", "/v1/cluster/members/6/promote", None, 409).await;
    tour.expect(
        behind.error_code().as_deref() == Some("learner_behind"),
        &behind,
        "an absent learner is behind",
    );
    tour.check("POST", "/v1/cluster/members/1/promote", None, 409).await;
    tour.check("POST", "/v1/cluster/members/9/promote", None, 404).await;
    tour.check("POST", "/v1/cluster/members/x/promote", None, 400).await;
    tour.check("PUT", "/v1/cluster/members/6", body(json!({})), 400).await;
    tour.check("PUT", "/v1/cluster/members/9", body(json!({"client_url": "http://127.0.0.1:2"})), 404).await;
    let moved = tour
        .check("PUT", "/v1/cluster/members/6", body(json!({"client_url": "http://127.0.0.1:2"})), 200)
        .await;
    tour.expect(moved.json()["client_url"] == "http://127.0.0.1:2", &moved, "the member moved");
    tour.check("DELETE", "/v1/cluster/members/1", None, 409).await;
    tour.check("DELETE", "/v1/cluster/members/9", None, 404).await;
    tour.check("DELETE", "/v1/cluster/members/6", None, 200).await;

    n.stop().await;
    assert!(errs.is_empty(), "the router and api/openapi.yaml disagree:\n  {}", errs.join("\n  "));
}

/// A node of one member cannot have a learner that caught up: the sample promote is
/// refused as the spec documents (409 `learner_behind`), which still shows it is routed.
fn promote_refused(method: &str, template: &str, reply: &Reply) -> bool {
    method == "POST"
        && template == "/v1/cluster/members/{id}/promote"
        && reply.error_code().as_deref() == Some("learner_behind")
}

/// A node that can never elect a leader (its only peer is unreachable): the 503 replies
/// (with Retry-After) of reads, writes and `/readyz`, and `leader: null` in `/v1/cluster`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderless_replies_match_the_spec() {
    let spec = load_spec();
    let n = TestNode::start(|cfg| {
        cfg.request_timeout_ms = 300;
        cfg.initial_cluster = Some(format!("1={},2={}", cfg.advertise().peer_url, member().peer_url));
    })
    .await;
    let mut errs = Vec::new();
    let mut tour = Tour { spec: &spec, router: &n.router, errs: &mut errs };
    let ready = tour.check("GET", "/readyz", None, 503).await;
    tour.expect(ready.headers.get("retry-after").is_some_and(|v| v == "1"), &ready, "Retry-After: 1");
    let key = "/v1/kv/openapi-sync/leaderless";
    let put = tour.check("PUT", key, Some(br#"{"value":"x"}"#.to_vec()), 503).await;
    tour.expect(put.error_code().as_deref() == Some("unavailable"), &put, "no leader: unavailable");
    tour.check("DELETE", key, None, 503).await;
    tour.check("GET", key, None, 503).await;
    tour.check("GET", &format!("{key}?consistency=serializable"), None, 404).await;
    tour.check("GET", "/v1/kv/?recursive&consistency=serializable", None, 200).await;
    tour.check("POST", "/v1/leases", Some(br#"{"ttl":"10s"}"#.to_vec()), 503).await;
    tour.check("POST", "/v1/leases/1/keepalive", None, 503).await;
    tour.check("GET", "/v1/leases/1", None, 503).await;
    tour.check("GET", "/v1/leases", None, 503).await;
    tour.check("DELETE", "/v1/leases/1", None, 503).await;
    // A linearizable watch or long-poll needs a quorum before it starts; a serializable
    // one starts on the local replica.
    let w = tour.check("GET", "/v1/watch/openapi-sync/leaderless?recursive", None, 503).await;
    tour.expect(w.headers.get("retry-after").is_some_and(|v| v == "1"), &w, "a watch without a quorum");
    let s = tour.stream("/v1/watch/openapi-sync/leaderless?consistency=serializable", &[], 1, 200).await;
    tour.expect(
        s.messages().first().map(|m| m.data.clone()) == Some(json!({"progress": {"revision": 0}})),
        &s,
        "a serializable watch starts without a leader",
    );
    tour.check("GET", &format!("{key}?wait&timeout=100ms"), None, 503).await;
    let v = tour.check("GET", &format!("{key}?wait&timeout=100ms&consistency=serializable"), None, 200).await;
    tour.expect(v.json()["changed"] == false && v.json()["kv"].is_null(), &v, "a serializable long-poll");
    // Locks and elections: writes and linearizable reads need a leader; serializable reads
    // are answered from the local replica.
    let lock = "/v1/locks/openapi-sync.leaderless";
    let election = "/v1/elections/openapi-sync.leaderless";
    tour.check("POST", lock, Some(br#"{"ttl":"10s","wait":"0s"}"#.to_vec()), 503).await;
    tour.check("DELETE", &format!("{lock}?owner=1-1"), None, 503).await;
    tour.check("GET", lock, None, 503).await;
    let free = tour.check("GET", &format!("{lock}?consistency=serializable"), None, 200).await;
    tour.expect(free.json()["limit"].is_null(), &free, "a serializable read of a free lock");
    tour.check("GET", "/v1/locks", None, 503).await;
    tour.check("GET", "/v1/locks?consistency=serializable", None, 200).await;
    let fence = Some(br#"{"name":"openapi-sync.leaderless","token":1}"#.to_vec());
    tour.check("POST", "/v1/fence/check", fence.clone(), 503).await;
    let stale = tour.check("POST", "/v1/fence/check?consistency=serializable", fence, 409).await;
    tour.expect(stale.json()["current_token"].is_null(), &stale, "nobody holds it");
    tour.check("POST", &format!("{election}/campaign"), Some(br#"{"value":"v","ttl":"10s"}"#.to_vec()), 503)
        .await;
    tour.check("PUT", &format!("{election}/leader"), Some(br#"{"owner":"1-1","value":"v"}"#.to_vec()), 503)
        .await;
    tour.check("DELETE", &format!("{election}/leader?owner=1-1"), None, 503).await;
    tour.check("GET", election, None, 503).await;
    tour.check("GET", &format!("{election}?consistency=serializable"), None, 404).await;
    tour.check("GET", &format!("{election}/observe"), None, 503).await;
    let s = tour.stream(&format!("{election}/observe?consistency=serializable"), &[], 1, 200).await;
    tour.expect(
        s.messages().first().map(|m| m.data.clone())
            == Some(json!({"name": "openapi-sync.leaderless", "revision": 0})),
        &s,
        "a serializable observer starts without a leader",
    );
    let cluster = tour.check("GET", "/v1/cluster", None, 200).await;
    tour.expect(cluster.json()["leader"].is_null(), &cluster, "no leader is known");
    tour.check("GET", "/healthz", None, 200).await;
    n.stop().await;
    assert!(errs.is_empty(), "the router and api/openapi.yaml disagree:\n  {}", errs.join("\n  "));
}

/// Past `--max-watchers`, a watch, a long-poll, a lock acquire, a campaign and an election
/// observer are 429 `overloaded` with Retry-After, as documented; a place freed is taken
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_limit_replies_match_the_spec() {
    let spec = load_spec();
    let n = TestNode::start(|cfg| cfg.max_watchers = 1).await;
    let mut errs = Vec::new();
    wait_ready(&spec, &n.router, &mut errs).await;
    // A watch whose stream is kept open holds the only place.
    let held = Request::get("/v1/watch/openapi-sync/limit").body(Body::empty()).expect("a request");
    let held = n.router.clone().oneshot(held).await.expect("the router is infallible");
    assert_eq!(held.status(), StatusCode::OK);
    let mut tour = Tour { spec: &spec, router: &n.router, errs: &mut errs };
    let acquire = || Some(br#"{"ttl":"1h","wait":"0s"}"#.to_vec());
    let campaign = || Some(br#"{"value":"v","ttl":"1h","wait":"0s"}"#.to_vec());
    for (method, uri, body) in [
        ("GET", "/v1/watch/openapi-sync/other?recursive", None),
        ("GET", "/v1/kv/openapi-sync/other?wait&timeout=1s", None),
        ("POST", "/v1/locks/openapi-sync.limit", acquire()),
        ("POST", "/v1/elections/openapi-sync.limit/campaign", campaign()),
        ("GET", "/v1/elections/openapi-sync.limit/observe", None),
    ] {
        let r = tour.check(method, uri, body, 429).await;
        tour.expect(
            r.error_code().as_deref() == Some("overloaded")
                && r.headers.get("retry-after").is_some_and(|v| v == "1"),
            &r,
            "past --max-watchers",
        );
    }
    tour.check("GET", "/v1/kv/openapi-sync/other", None, 404).await;
    tour.check("GET", "/v1/locks/openapi-sync.limit", None, 200).await;
    tour.check("GET", "/v1/elections/openapi-sync.limit", None, 404).await;
    drop(held);
    tour.stream("/v1/watch/openapi-sync/other?recursive", &[], 1, 200).await;
    tour.check("GET", "/v1/kv/openapi-sync/other?wait&timeout=10ms", None, 200).await;
    tour.check("POST", "/v1/locks/openapi-sync.limit", acquire(), 200).await;
    tour.check("POST", "/v1/elections/openapi-sync.limit/campaign", campaign(), 200).await;
    tour.stream("/v1/elections/openapi-sync.limit/observe", &[], 1, 200).await;
    n.stop().await;
    assert!(errs.is_empty(), "the router and api/openapi.yaml disagree:\n  {}", errs.join("\n  "));
}

/// `?revision=N` reads history, and the reply reports `revision` = N, in the body and in
/// X-Palisade-Revision, whatever the kind of read (the spec's `revision` parameter; API.md:
/// "a history read reports `revision` = N").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_report_the_revision_asked_for() {
    let spec = load_spec();
    let n = TestNode::start(|_| {}).await;
    let mut errs = Vec::new();
    wait_ready(&spec, &n.router, &mut errs).await;
    let mut tour = Tour { spec: &spec, router: &n.router, errs: &mut errs };
    let p = "/v1/kv/openapi-sync/history";
    let put = tour.check("PUT", &format!("{p}/a"), Some(br#"{"value":"1"}"#.to_vec()), 200).await;
    let at = put.json()["revision"].as_u64().expect("a revision");
    tour.check("PUT", &format!("{p}/b"), Some(br#"{"value":"2"}"#.to_vec()), 200).await;
    for uri in [
        format!("{p}/a?revision={at}"),
        format!("{p}?recursive&revision={at}"),
        format!("{p}?recursive&keys_only&revision={at}"),
        format!("{p}?recursive&count_only&revision={at}"),
        format!("{p}?children&revision={at}"),
    ] {
        let reply = tour.check("GET", &uri, None, 200).await;
        let header =
            reply.headers.get("x-palisade-revision").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        tour.expect(
            reply.json()["revision"] == at && header == Some(at),
            &reply,
            &format!("a read at revision {at} should report revision {at}"),
        );
    }
    n.stop().await;
    assert!(errs.is_empty(), "history reads:\n  {}", errs.join("\n  "));
}

/// Waits (polling the serializable read) until the lock or election at `uri` has a waiter,
/// and returns the first waiter's owner.
async fn first_waiter(router: &Router, uri: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = send(router, "GET", &format!("{uri}?consistency=serializable"), None).await;
        if let Some(owner) = r.json()["waiters"][0]["owner"].as_str() {
            return owner.to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "no waiter showed up at {uri}: {}", r.describe());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until this node has applied a revision above `revision`.
async fn revision_above(router: &Router, revision: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = send(router, "GET", "/v1/cluster", None).await;
        if r.json()["revision"].as_u64().is_some_and(|r| r > revision) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the revision stays at {revision}: {}", r.describe());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Locks, elections and the fence check: a tour of their replies (grants, waits that end
/// each way, releases, reads, listings, the fence check and the fence compare, observer
/// streams in both framings, and refusals), each checked against the spec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_replies_match_the_spec() {
    let spec = load_spec();
    let n = TestNode::start(|_| {}).await;
    let mut errs = Vec::new();
    wait_ready(&spec, &n.router, &mut errs).await;
    let mut tour = Tour { spec: &spec, router: &n.router, errs: &mut errs };
    let router = tour.router;
    let body = |v: Value| Some(serde_json::to_vec(&v).expect("JSON"));
    let code = |r: &Reply| r.error_code().unwrap_or_default();
    let num = |r: &Reply, f: &str| r.json()[f].as_u64().unwrap_or(0);
    let text = |r: &Reply, f: &str| r.json()[f].as_str().unwrap_or_default().to_string();
    let replayed = |r: &Reply| r.headers.get("idempotent-replayed").is_some_and(|v| v == "true");
    let lease = num(&tour.check("POST", "/v1/leases", body(json!({"ttl": "1h"})), 201).await, "id");
    let other = num(&tour.check("POST", "/v1/leases", body(json!({"ttl": "1h"})), 201).await, "id");

    // Grants, and acquires that are not granted.
    let l = "/v1/locks/openapi-sync.lock";
    let g = tour.check("POST", l, body(json!({"ttl": "1h", "wait": "0s"})), 200).await;
    let (holder, token) = (text(&g, "owner"), num(&g, "fencing_token"));
    tour.expect(token > 0 && token == num(&g, "revision"), &g, "an immediate grant's token is its revision");
    let busy = tour.check("POST", l, body(json!({"lease": lease, "wait": 0})), 409).await;
    tour.expect(code(&busy) == "lock_timeout", &busy, "try once on a held lock");
    let late = tour.check("POST", l, body(json!({"lease": lease, "wait": "100ms"})), 409).await;
    tour.expect(code(&late) == "lock_timeout", &late, "a wait that ran out");
    let mismatch = tour.check("POST", l, body(json!({"lease": lease, "limit": 2, "wait": 0})), 409).await;
    tour.expect(
        code(&mismatch) == "limit_mismatch" && mismatch.json()["error"]["limit"] == 1,
        &mismatch,
        "another limit",
    );
    let missing = tour.check("POST", "/v1/locks/openapi-sync.x", body(json!({"lease": 777_777})), 404).await;
    tour.expect(code(&missing) == "lease_not_found", &missing, "an acquire under a missing lease");

    // A semaphore, and a replayed grant.
    let sem = "/v1/locks/openapi-sync.sem";
    let ik = [("idempotency-key", "openapi-sync-lock-1")];
    let a1 = tour.check_with("POST", sem, &ik, body(json!({"lease": lease, "limit": 2})), 200).await;
    let a2 = tour.check_with("POST", sem, &ik, body(json!({"lease": lease, "limit": 2})), 200).await;
    tour.expect(!replayed(&a1) && replayed(&a2) && a1.json() == a2.json(), &a2, "a replayed grant");
    tour.check_with("POST", sem, &ik, body(json!({"lease": lease, "limit": 3})), 422).await;
    let a3 = tour.check("POST", sem, body(json!({"lease": other})), 200).await;
    tour.expect(num(&a3, "fencing_token") > num(&a1, "fencing_token"), &a3, "the second holder");
    let s = tour.check("GET", sem, None, 200).await;
    tour.expect(
        s.json()["limit"] == 2 && s.json()["holders"].as_array().is_some_and(|h| h.len() == 2),
        &s,
        "a semaphore with two holders",
    );

    // A waiter: shown by the reads, granted when the holder releases.
    let waiting = send(router, "POST", l, body(json!({"lease": other, "wait": "10s"})));
    let release = async {
        first_waiter(router, l).await;
        let read = send(router, "GET", l, None).await;
        let list = send(router, "GET", "/v1/locks", None).await;
        let rel = send(router, "DELETE", &format!("{l}?owner={holder}"), None).await;
        (read, list, rel)
    };
    let (granted, (read, list, rel)) = tokio::join!(waiting, release);
    for r in [&granted, &read, &list, &rel] {
        conform(tour.spec, r, tour.errs);
    }
    tour.expect(read.json()["waiters"][0]["lease"] == other, &read, "the waiter");
    tour.expect(list.json()["count"] == 2, &list, "two locks held");
    tour.expect(rel.json()["released"] == true, &rel, "the holder released");
    tour.expect(
        granted.status == StatusCode::OK && num(&granted, "fencing_token") == num(&rel, "revision") + 1,
        &granted,
        "the waiter is granted at the revision after the release",
    );
    let again = tour.check("DELETE", &format!("{l}?owner={}", text(&g, "owner")), None, 404).await;
    tour.expect(code(&again) == "owner_not_found", &again, "a retried release");

    // A waiter whose lease ends, and a waiter released by another request.
    let doomed = num(&tour.check("POST", "/v1/leases", body(json!({"ttl": "1h"})), 201).await, "id");
    let (ended, revoked) = tokio::join!(send(router, "POST", l, body(json!({"lease": doomed}))), async {
        first_waiter(router, l).await;
        send(router, "DELETE", &format!("/v1/leases/{doomed}"), None).await
    });
    conform(tour.spec, &ended, tour.errs);
    conform(tour.spec, &revoked, tour.errs);
    tour.expect(
        code(&ended) == "lease_expired" && ended.json()["error"]["lease"] == doomed,
        &ended,
        "the waiter's lease ended",
    );
    let (withdrawn, left) = tokio::join!(send(router, "POST", l, body(json!({"ttl": "1h"}))), async {
        let w = first_waiter(router, l).await;
        send(router, "DELETE", &format!("{l}?owner={w}"), None).await
    });
    conform(tour.spec, &withdrawn, tour.errs);
    conform(tour.spec, &left, tour.errs);
    tour.expect(left.json()["released"] == false, &left, "a waiter leaves the queue");
    tour.expect(code(&withdrawn) == "lock_timeout", &withdrawn, "the withdrawn waiter's acquire");

    // Reads and listings.
    let free = tour.check("GET", "/v1/locks/openapi-sync.free?consistency=serializable", None, 200).await;
    tour.expect(
        free.json()["limit"].is_null() && free.json()["holders"] == json!([]),
        &free,
        "a lock nobody holds",
    );
    let page = tour.check("GET", "/v1/locks?limit=1", None, 200).await;
    let next = text(&page, "next");
    tour.expect(page.json()["more"] == true && next == "openapi-sync.lock", &page, "a first page of locks");
    let rest = tour
        .check("GET", &format!("/v1/locks?limit=5&after={next}&consistency=linearizable"), None, 200)
        .await;
    tour.expect(
        rest.json()["more"] == false && rest.json()["locks"][0]["name"] == "openapi-sync.sem",
        &rest,
        "the last page",
    );

    // The fence check, and the fence compare of a transaction.
    let fence = |name: &str, token: u64| body(json!({"name": name, "token": token}));
    let token = num(&granted, "fencing_token");
    let ok = tour.check("POST", "/v1/fence/check", fence("openapi-sync.lock", token), 200).await;
    tour.expect(ok.json()["valid"] == true && ok.json()["token"] == token, &ok, "a valid token");
    let stale = tour.check("POST", "/v1/fence/check", fence("openapi-sync.lock", token - 1), 409).await;
    tour.expect(
        stale.json()["valid"] == false
            && stale.json()["current_token"] == token
            && code(&stale) == "stale_token",
        &stale,
        "a stale token",
    );
    let nobody = tour
        .check("POST", "/v1/fence/check?consistency=serializable", fence("openapi-sync.free", 1), 409)
        .await;
    tour.expect(nobody.json()["current_token"].is_null(), &nobody, "nobody holds it");
    let fenced = |op: &str, token: u64| {
        body(json!({
            "compare": [{"lock": "openapi-sync.lock", "target": "fence", "op": op, "value": token}],
            "success": [{"put": {"key": "/openapi-sync/fenced", "value": "x"}}],
        }))
    };
    let t = tour.check("POST", "/v1/txn", fenced("==", token), 200).await;
    tour.expect(t.json()["succeeded"] == true, &t, "a fenced write with the current token");
    let t = tour.check("POST", "/v1/txn", fenced("==", token - 1), 200).await;
    tour.expect(t.json()["succeeded"] == false, &t, "a fenced write with a stale token");
    let t = tour.check("POST", "/v1/txn", fenced("!=", token - 1), 200).await;
    tour.expect(t.json()["succeeded"] == true, &t, "!= with a stale token");

    // Elections.
    let e = "/v1/elections/openapi-sync.e";
    let none = tour.check("GET", e, None, 404).await;
    tour.expect(code(&none) == "no_leader", &none, "nobody leads");
    let s = tour.stream(&format!("{e}/observe"), &[], 1, 200).await;
    tour.expect(
        s.messages().first().map(|m| m.data.clone())
            == Some(json!({"name": "openapi-sync.e", "revision": none.header_u64("x-palisade-revision")})),
        &s,
        "an observer starts with the state now",
    );
    let c =
        tour.check("POST", &format!("{e}/campaign"), body(json!({"value": "a", "lease": lease})), 200).await;
    let leader = text(&c, "owner");
    tour.expect(c.json()["value"] == "a" && num(&c, "fencing_token") == num(&c, "revision"), &c, "a leader");
    let loser = tour
        .check(
            "POST",
            &format!("{e}/campaign"),
            body(json!({"value_base64": "/wA=", "ttl": "1h", "wait": "0s"})),
            409,
        )
        .await;
    tour.expect(code(&loser) == "lock_timeout", &loser, "a campaign that tries once");
    let p = tour
        .check("PUT", &format!("{e}/leader"), body(json!({"owner": leader, "value_base64": "/wA="})), 200)
        .await;
    tour.expect(
        p.json()["value_base64"] == "/wA=" && p.json()["fencing_token"] == c.json()["fencing_token"],
        &p,
        "a proclaim keeps the token",
    );
    let not =
        tour.check("PUT", &format!("{e}/leader"), body(json!({"owner": "1-1", "value": "b"})), 409).await;
    tour.expect(code(&not) == "not_leader", &not, "a proclaim by a non-leader");
    tour.check("GET", &format!("{e}?consistency=serializable"), None, 200).await;
    for headers in [&[][..], &[("accept", "application/x-ndjson")][..]] {
        let s = tour.stream(&format!("{e}/observe"), headers, 1, 200).await;
        let first = s.messages().first().map(|m| m.data.clone()).unwrap_or_default();
        let leader_of = |d: &Value| if d.get("leader").is_some() { d["leader"].clone() } else { d.clone() };
        tour.expect(leader_of(&first)["value_base64"] == "/wA=", &s, "an observer sees the leader's value");
    }
    // (A waiting candidate shows in no read: its queueing is seen as the revision it took.)
    let before = num(&p, "revision");
    let campaign = format!("{e}/campaign");
    let (next_leader, resigned) =
        tokio::join!(send(router, "POST", &campaign, body(json!({"value": "c", "lease": other}))), async {
            revision_above(router, before).await;
            send(router, "DELETE", &format!("{e}/leader?owner={leader}"), None).await
        });
    conform(tour.spec, &next_leader, tour.errs);
    conform(tour.spec, &resigned, tour.errs);
    tour.expect(
        next_leader.json()["value"] == "c" && resigned.json()["released"] == true,
        &next_leader,
        "a resign hands over to the next candidate",
    );
    let not = tour.check("DELETE", &format!("{e}/leader?owner={leader}"), None, 409).await;
    tour.expect(code(&not) == "not_leader", &not, "a second resign");
    let new_leader = text(&next_leader, "owner");
    tour.check("DELETE", &format!("{e}/leader?owner={new_leader}"), None, 200).await;
    let s = tour.stream(&format!("{e}/observe"), &[("accept", "application/x-ndjson")], 1, 200).await;
    tour.expect(
        s.messages().first().is_some_and(|m| m.data.get("no_leader").is_some()),
        &s,
        "nobody leads after the last resign",
    );

    // Refusals.
    let long = "n".repeat(129);
    for (method, uri, b) in [
        ("POST", "/v1/locks/a%2Fb".to_string(), body(json!({"ttl": "1h"}))),
        ("POST", "/v1/locks/a%20b".to_string(), body(json!({"ttl": "1h"}))),
        ("POST", format!("/v1/locks/{long}"), body(json!({"ttl": "1h"}))),
        ("POST", l.to_string(), body(json!({"ttl": "1h", "lease": lease}))),
        ("POST", l.to_string(), body(json!({}))),
        ("POST", l.to_string(), body(json!({"wait": "1s"}))),
        ("POST", l.to_string(), body(json!({"ttl": "1s"}))),
        ("POST", l.to_string(), body(json!({"ttl": "10"}))),
        ("POST", l.to_string(), body(json!({"lease": 0}))),
        ("POST", l.to_string(), body(json!({"ttl": "1h", "wait": "11m"}))),
        ("POST", l.to_string(), body(json!({"ttl": "1h", "wait": "0"}))),
        ("POST", l.to_string(), body(json!({"ttl": "1h", "wait": -1}))),
        ("POST", l.to_string(), body(json!({"ttl": "1h", "limit": 0}))),
        ("POST", l.to_string(), body(json!({"ttl": "1h", "limit": 10_001}))),
        ("POST", l.to_string(), body(json!({"ttl": "1h", "limit": 1.5}))),
        ("POST", l.to_string(), body(json!({"ttl": "1h", "limit": "2"}))),
        ("POST", l.to_string(), body(json!({"ttl": "1h", "bogus": 1}))),
        ("POST", format!("{l}?wait=1s"), body(json!({"ttl": "1h"}))),
        ("POST", l.to_string(), Some(Vec::new())),
        ("POST", l.to_string(), Some(b"[".to_vec())),
        ("DELETE", l.to_string(), None),
        ("DELETE", format!("{l}?owner="), None),
        ("DELETE", format!("{l}?owner={long}"), None),
        ("DELETE", format!("{l}?owner=a+b"), None),
        ("DELETE", format!("{l}?owner=1-1&owner=1-2"), None),
        ("DELETE", format!("{l}?owner=1-1&x=1"), None),
        ("GET", format!("{l}?x=1"), None),
        ("GET", format!("{l}?consistency=eventual"), None),
        ("GET", "/v1/locks?limit=0".to_string(), None),
        ("GET", "/v1/locks?limit=10001".to_string(), None),
        ("GET", "/v1/locks?limit=x".to_string(), None),
        ("GET", "/v1/locks?after=a%2Fb".to_string(), None),
        ("POST", "/v1/fence/check".to_string(), body(json!({"name": "openapi-sync.lock"}))),
        ("POST", "/v1/fence/check".to_string(), body(json!({"token": 1}))),
        ("POST", "/v1/fence/check".to_string(), body(json!({"name": "openapi-sync.lock", "token": 0}))),
        ("POST", "/v1/fence/check".to_string(), body(json!({"name": "openapi-sync.lock", "token": -1}))),
        ("POST", "/v1/fence/check".to_string(), body(json!({"name": "a/b", "token": 1}))),
        ("POST", "/v1/fence/check".to_string(), body(json!({"name": "x", "token": 1, "bogus": 1}))),
        ("POST", "/v1/fence/check".to_string(), Some(Vec::new())),
        ("POST", "/v1/fence/check?x=1".to_string(), fence("openapi-sync.lock", 1)),
        ("POST", format!("{e}/campaign"), body(json!({"ttl": "1h"}))),
        ("POST", format!("{e}/campaign"), body(json!({"value": "a", "value_base64": "YQ==", "ttl": "1h"}))),
        ("POST", format!("{e}/campaign"), body(json!({"value_base64": "%%%", "ttl": "1h"}))),
        ("POST", format!("{e}/campaign"), body(json!({"value": "a", "ttl": "1h", "limit": 1}))),
        ("POST", format!("{e}/campaign"), body(json!({"value": "a"}))),
        ("POST", "/v1/elections/a%2Fb/campaign".to_string(), body(json!({"value": "a", "ttl": "1h"}))),
        ("PUT", format!("{e}/leader"), body(json!({"value": "a"}))),
        ("PUT", format!("{e}/leader"), body(json!({"owner": "1-1"}))),
        ("PUT", format!("{e}/leader"), body(json!({"owner": "", "value": "a"}))),
        ("DELETE", format!("{e}/leader"), None),
        ("GET", format!("{e}?x=1"), None),
        ("GET", format!("{e}/observe?x=1"), None),
        ("GET", format!("{e}/observe?consistency=eventual"), None),
    ] {
        let r = tour.check(method, &uri, b, 400).await;
        let c = code(&r);
        tour.expect(c == "invalid_argument" || c == "invalid_json", &r, "a refused lock request");
    }
    let big = format!(r#"{{"value":"{}","ttl":"1h"}}"#, "v".repeat(1024 * 1024 + 1));
    tour.check("POST", &format!("{e}/campaign"), Some(big.into_bytes()), 413).await;
    n.stop().await;
    assert!(errs.is_empty(), "the router and api/openapi.yaml disagree:\n  {}", errs.join("\n  "));
}

/// Past `--max-lock-owners`, or with `ttl` past `--max-leases`, an acquire or a campaign is
/// 507 `quota_exceeded`, as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_owner_limit_replies_match_the_spec() {
    let spec = load_spec();
    let n = TestNode::start(|cfg| {
        cfg.max_lock_owners = 1;
        cfg.max_leases = 2;
    })
    .await;
    let mut errs = Vec::new();
    wait_ready(&spec, &n.router, &mut errs).await;
    let mut tour = Tour { spec: &spec, router: &n.router, errs: &mut errs };
    let body = |v: Value| Some(serde_json::to_vec(&v).expect("JSON"));
    let lease = tour.check("POST", "/v1/leases", body(json!({"ttl": "1h"})), 201).await.json()["id"].clone();
    let g = tour.check("POST", "/v1/locks/one", body(json!({"ttl": "1h"})), 200).await;
    for (uri, b) in [
        ("/v1/locks/two", json!({"lease": lease})),
        ("/v1/elections/two/campaign", json!({"value": "v", "lease": lease})),
    ] {
        let r = tour.check("POST", uri, body(b), 507).await;
        tour.expect(r.error_code().as_deref() == Some("quota_exceeded"), &r, "past --max-lock-owners");
    }
    let owner = g.json()["owner"].as_str().unwrap_or_default().to_string();
    tour.check("DELETE", &format!("/v1/locks/one?owner={owner}"), None, 200).await;
    // Two leases exist (the client's and the one made for the first acquire).
    let r = tour.check("POST", "/v1/locks/two", body(json!({"ttl": "1h"})), 507).await;
    tour.expect(r.error_code().as_deref() == Some("quota_exceeded"), &r, "past --max-leases");
    tour.check("POST", "/v1/locks/two", body(json!({"lease": lease})), 200).await;
    n.stop().await;
    assert!(errs.is_empty(), "the router and api/openapi.yaml disagree:\n  {}", errs.join("\n  "));
}

/// Sends requests the spec lists and records every way a reply departs from it.
struct Tour<'a> {
    spec: &'a Value,
    router: &'a Router,
    errs: &'a mut Vec<String>,
}

impl Tour<'_> {
    async fn check(&mut self, method: &str, uri: &str, body: Option<Vec<u8>>, status: u16) -> Reply {
        self.check_with(method, uri, &[], body, status).await
    }

    async fn check_with(
        &mut self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        status: u16,
    ) -> Reply {
        let reply = send_with(self.router, method, uri, headers, body).await;
        if reply.status.as_u16() != status {
            self.errs.push(format!("expected {status}: {}", abbreviated(&reply)));
        }
        conform(self.spec, &reply, self.errs);
        reply
    }

    /// A watch: its first `messages` messages (or fewer, if it ends or they take longer
    /// than [`STREAM_PATIENCE`]).
    async fn stream(&mut self, uri: &str, headers: &[(&str, &str)], messages: usize, status: u16) -> Reply {
        self.stream_for(uri, headers, messages, STREAM_PATIENCE, status).await
    }

    async fn stream_for(
        &mut self,
        uri: &str,
        headers: &[(&str, &str)],
        messages: usize,
        patience: Duration,
        status: u16,
    ) -> Reply {
        let reply = send_reading(self.router, "GET", uri, headers, None, messages, patience).await;
        if reply.status.as_u16() != status {
            self.errs.push(format!("expected {status}: {}", abbreviated(&reply)));
        }
        conform(self.spec, &reply, self.errs);
        reply
    }

    fn expect(&mut self, ok: bool, reply: &Reply, what: &str) {
        if !ok {
            self.errs.push(format!("{what}: {}", abbreviated(reply)));
        }
    }
}

fn abbreviated(reply: &Reply) -> String {
    let mut s = reply.describe();
    if s.len() > 600 {
        s.truncate(600);
        s.push_str("...");
    }
    s
}

/// With client auth on: every `/v1/` operation of the spec answers a request without a
/// token, or with a bad one, with its documented 401 (and `WWW-Authenticate`); a valid
/// token without permissions gets each operation's documented 403 (or, where the spec
/// lists no 403, a documented success); the health probes stay open; and a lease read
/// shows its owner as the spec says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_replies_match_the_spec() {
    let spec = load_spec();
    let dir = tempfile::tempdir().expect("a temp dir");
    let secret = dir.path().join("jwt-secret");
    std::fs::write(&secret, "an-hs256-secret-of-at-least-32-bytes\n").unwrap();
    let path = secret.clone();
    let n = TestNode::start(move |cfg| cfg.auth_jwt_secret_file = Some(path)).await;
    let mut errs = Vec::new();
    wait_ready(&spec, &n.router, &mut errs).await;
    let now = palisade::clock::wall_clock_ms() / 1000;
    let token = |sub: &str, grants: palisade::auth::Grants| {
        let req = palisade::auth::MintRequest {
            subject: sub.into(),
            grants,
            issued_at: now,
            expires_at: now + 600,
            ..Default::default()
        };
        format!("Bearer {}", palisade::auth::mint(&req, palisade::auth::SigningKey::Secret(&secret)).unwrap())
    };
    let nobody = token("nobody", palisade::auth::Grants::default());
    let admin = token("root", palisade::auth::Grants::everything());
    let mut tour = Tour { spec: &spec, router: &n.router, errs: &mut errs };
    let lease_id = deref(&spec, &spec["components"]["parameters"]["LeaseId"])["example"].clone();
    let grant = serde_json::to_vec(&json!({"ttl": "1h", "id": lease_id})).unwrap();
    tour.check_with("POST", "/v1/leases", &[("authorization", &admin)], Some(grant), 201).await;
    let shown = tour
        .check_with("GET", &format!("/v1/leases/{lease_id}"), &[("authorization", &admin)], None, 200)
        .await;
    tour.expect(shown.json()["owner"] == "root", &shown, "a lease shows the subject that granted it");
    for (path, item) in paths(&spec) {
        if !path.starts_with("/v1/") {
            continue;
        }
        for (method, op) in item.as_object().expect("a path item") {
            if !HTTP_METHODS.contains(&method.as_str()) {
                continue;
            }
            let m = method.to_uppercase();
            let uri = sample_uri(&spec, method, path, "openapi-sync/auth");
            let body = example_body(&spec, op);
            for headers in
                [vec![], vec![("authorization", "Bearer not.a.jwt")], vec![("authorization", "Basic eDp5")]]
            {
                let r = tour.check_with(&m, &uri, &headers, body.clone(), 401).await;
                let challenge = r.headers.get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("");
                tour.expect(
                    r.error_code().as_deref() == Some("unauthenticated")
                        && challenge.starts_with("Bearer realm=\"palisade\""),
                    &r,
                    "401 unauthenticated with a Bearer challenge",
                );
            }
            let status = if op["responses"].get("403").is_some() {
                403
            } else if m == "POST" {
                201
            } else {
                200
            };
            let r = tour.check_with(&m, &uri, &[("authorization", &nobody)], body.clone(), status).await;
            if status == 403 {
                tour.expect(
                    r.error_code().as_deref() == Some("permission_denied"),
                    &r,
                    "403 permission_denied",
                );
            }
        }
    }
    tour.check("GET", "/healthz", None, 200).await;
    tour.check("GET", "/readyz", None, 200).await;
    // `--metrics auth` (the default): any valid token reads the metrics, no token does not.
    tour.check("GET", "/metrics", None, 401).await;
    tour.check_with("GET", "/metrics", &[("authorization", "Bearer not.a.jwt")], None, 401).await;
    tour.check_with("GET", "/metrics", &[("authorization", &nobody)], None, 200).await;
    n.stop().await;
    assert!(errs.is_empty(), "the router and api/openapi.yaml disagree:\n  {}", errs.join("\n  "));
}
