//! Tests of path templates, typed captures, the route table and near-miss
//! explanations (`routes.rs`).

use super::*;
use crate::path::normalize;

fn route(name: &str, methods: &[&str], path: &str) -> Route {
    Route {
        name: name.into(),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        template: PathTemplate::parse(path).unwrap_or_else(|e| panic!("{path}: {e}")),
        access: Access::Granted,
        resource: None,
        action: None,
        condition: None,
        headers: Vec::new(),
    }
}

fn found(table: &RouteTable, method: &str, path: &str) -> Option<(String, Vec<String>)> {
    let path = normalize(path).ok()?;
    table.find(method, &path).map(|(r, c)| {
        (
            r.name.to_string(),
            c.into_iter().map(str::to_owned).collect(),
        )
    })
}

#[test]
fn most_specific_route_wins_whatever_the_order() {
    let make = || {
        vec![
            route("rest", &["GET"], "/documents/{path...}"),
            route("one", &["GET"], "/documents/{id}"),
            route("literal", &["GET"], "/documents/new"),
            route("comments", &["GET"], "/documents/{id}/comments"),
            route("comment", &["GET"], "/documents/{id}/comments/{cid}"),
            route("root", &["GET"], "/"),
        ]
    };
    let mut reversed = make();
    reversed.reverse();
    for table in [RouteTable::new(make()), RouteTable::new(reversed)] {
        let f = |p: &str| found(&table, "GET", p).map(|(n, _)| n);
        assert_eq!(f("/documents/new").as_deref(), Some("literal"));
        assert_eq!(f("/documents/7").as_deref(), Some("one"));
        assert_eq!(f("/documents/7/comments").as_deref(), Some("comments"));
        assert_eq!(f("/documents/7/comments/9").as_deref(), Some("comment"));
        assert_eq!(f("/documents/7/other/x").as_deref(), Some("rest"));
        assert_eq!(f("/").as_deref(), Some("root"));
        assert_eq!(f("/documents"), None);
        assert_eq!(f("/other"), None);
    }
}

#[test]
fn captures_and_rest_are_returned() {
    let table = RouteTable::new(vec![
        route("comment", &["GET"], "/documents/{id}/comments/{cid}"),
        route("files", &["GET"], "/files/{path...}"),
    ]);
    assert_eq!(
        found(&table, "GET", "/documents/a-1/comments/b_2"),
        Some(("comment".into(), vec!["a-1".into(), "b_2".into()]))
    );
    assert_eq!(
        found(&table, "GET", "/files/a/b.txt"),
        Some(("files".into(), vec!["a/b.txt".into()]))
    );
    assert_eq!(found(&table, "GET", "/files"), None);
}

#[test]
fn method_must_match_exactly() {
    let table = RouteTable::new(vec![route("one", &["GET", "HEAD"], "/documents/{id}")]);
    assert!(found(&table, "GET", "/documents/1").is_some());
    assert!(found(&table, "HEAD", "/documents/1").is_some());
    assert!(found(&table, "get", "/documents/1").is_none());
    assert!(found(&table, "DELETE", "/documents/1").is_none());
}

#[test]
fn captures_refuse_reserved_characters() {
    let table = RouteTable::new(vec![
        route("one", &["GET"], "/documents/{id}"),
        route("files", &["GET"], "/files/{path...}"),
    ]);
    for p in [
        "/documents/1;x",
        "/documents/1:2",
        "/documents/a%20b",
        "/documents/1,2",
        "/files/a/b;c",
    ] {
        assert_eq!(found(&table, "GET", p), None, "{p}");
    }
}

#[test]
fn typed_captures_accept_only_canonical_values() {
    let table = RouteTable::new(vec![
        route("by-number", &["GET"], "/documents/{id:uint}"),
        route("by-uuid", &["GET"], "/files/{id:uuid}"),
        route("any", &["GET"], "/documents/{name}"),
    ]);
    let f = |p: &str| found(&table, "GET", p).map(|(n, _)| n);
    assert_eq!(f("/documents/0").as_deref(), Some("by-number"));
    assert_eq!(
        f("/documents/18446744073709551615").as_deref(),
        Some("by-number")
    );
    // Not canonical integers: the untyped route (or none) takes them.
    for p in [
        "/documents/01",
        "/documents/1.json",
        "/documents/-1",
        "/documents/18446744073709551616",
    ] {
        assert_eq!(f(p).as_deref(), Some("any"), "{p}");
    }
    // Not unreserved at all: no route.
    assert_eq!(f("/documents/+1"), None);
    assert_eq!(
        f("/files/0a1b2c3d-0000-4000-8000-00000000000f").as_deref(),
        Some("by-uuid")
    );
    for p in [
        "/files/0A1B2C3D-0000-4000-8000-00000000000F",
        "/files/0a1b2c3d00004000800000000000000f",
        "/files/{0a1b2c3d-0000-4000-8000-00000000000f}",
        "/files/0a1b2c3d-0000-4000-8000-00000000000g",
    ] {
        assert_eq!(f(p), None, "{p}");
    }
    assert!(matches!(
        PathTemplate::parse("/a/{id:int}"),
        Err(TemplateError::BadCaptureType(_))
    ));
    assert_eq!(
        PathTemplate::parse("/a/{rest:uint...}"),
        Err(TemplateError::TypedRest)
    );
    let t = PathTemplate::parse("/a/{id:uint}").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.to_string(), "/a/{id:uint}");
    assert_eq!(t.shape(), "/a/{:uint}");
}

fn closest(table: &RouteTable, method: &str, path: &str) -> Option<String> {
    let path = normalize(path).ok()?;
    table.closest(method, &path).map(|m| m.describe(method))
}

#[test]
fn the_closest_route_explains_a_miss() {
    let table = RouteTable::new(vec![
        route("read-user", &["GET", "PUT"], "/users/{id}"),
        route("read-todo", &["GET"], "/todos/{id:uint}"),
        route("todo-items", &["GET"], "/todos/{id:uint}/items"),
        route("files", &["GET"], "/files/{path...}"),
    ]);
    let why = |m: &str, p: &str| closest(&table, m, p).unwrap_or_else(|| panic!("{m} {p}"));
    assert_eq!(
        why("GET", "/users/beth@the-smiths.com"),
        "route \"read-user\" (/users/{id}): segment 2 \"beth@the-smiths.com\" holds characters a capture does not accept (`@`): captures take only A-Z a-z 0-9 - . _ ~"
    );
    assert_eq!(
        why("GET", "/todos/01"),
        "route \"read-todo\" (/todos/{id:uint}): segment 2: `{id:uint}` does not accept \"01\" (it takes an unsigned integer without leading zeros)"
    );
    assert_eq!(
        why("DELETE", "/users/beth"),
        "route \"read-user\" (/users/{id}) takes GET, PUT, not DELETE"
    );
    assert_eq!(
        why("GET", "/todos/7/items/3"),
        "route \"todo-items\" (/todos/{id:uint}/items): the path goes on after the template ends, at segment 4 \"3\""
    );
    assert_eq!(
        why("GET", "/todo/7"),
        "route \"read-todo\" (/todos/{id:uint}): segment 1 \"todo\" is not \"todos\""
    );
    assert!(why("GET", "/files/a/b+c").contains("segment 3 \"b+c\""));
    assert!(why("GET", "/users").contains("the path ends where the template goes on with /{id}"));
    assert_eq!(closest(&table, "GET", "/users/beth"), None);
    let long = format!("/users/{}@x", "a".repeat(500));
    assert!(why("GET", &long).len() < 300, "{}", why("GET", &long));
}

#[test]
fn templates_are_validated() {
    assert_eq!(
        PathTemplate::parse("documents"),
        Err(TemplateError::NoLeadingSlash)
    );
    assert_eq!(
        PathTemplate::parse("/a//b"),
        Err(TemplateError::EmptySegment)
    );
    assert!(matches!(
        PathTemplate::parse("/a;b"),
        Err(TemplateError::BadLiteral(_))
    ));
    assert!(matches!(
        PathTemplate::parse("/a/.."),
        Err(TemplateError::DotLiteral(_))
    ));
    assert!(matches!(
        PathTemplate::parse("/{1d}"),
        Err(TemplateError::BadCaptureName(_))
    ));
    assert!(matches!(
        PathTemplate::parse("/{a}/{a}"),
        Err(TemplateError::DuplicateCapture(_))
    ));
    assert_eq!(
        PathTemplate::parse("/{a...}/b"),
        Err(TemplateError::RestNotLast)
    );
    let t = PathTemplate::parse("/documents/{id}").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.to_string(), "/documents/{id}");
    assert_eq!(t.shape(), "/documents/{}");
    assert!(matches!(
        ResourceTemplate::parse("document:{nope}", &t),
        Err(TemplateError::UnknownCapture(_))
    ));
    assert_eq!(
        ResourceTemplate::parse("document:{id", &t),
        Err(TemplateError::BadBrace)
    );
    let r = ResourceTemplate::parse("document:{id}", &t).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.render(&["42"]), "document:42");
}

#[test]
fn email_captures_take_addresses_and_nothing_that_separates() {
    let table = RouteTable::new(vec![
        route("user", &["GET"], "/users/{email:email}"),
        route("user-any", &["GET"], "/users/{name}"),
    ]);
    let taken = |path: &str| found(&table, "GET", path).map(|(name, _)| name);
    for ok in [
        "/users/beth@the-smiths.com",
        "/users/beth+news@the-smiths.com",
        "/users/first.last@mail.example.org",
        "/users/a_b~c-d@x1.io",
    ] {
        assert_eq!(taken(ok).as_deref(), Some("user"), "{ok}");
    }
    assert_eq!(
        found(&table, "GET", "/users/beth+news@the-smiths.com").map(|(_, c)| c),
        Some(vec!["beth+news@the-smiths.com".to_owned()])
    );
    // Not an address: the untyped capture may take it, if unreserved.
    assert_eq!(taken("/users/beth").as_deref(), Some("user-any"));
    for refused in [
        "/users/beth@The-Smiths.com",
        "/users/beth@localhost",
        "/users/.beth@x.com",
        "/users/beth.@x.com",
        "/users/be..th@x.com",
        "/users/beth@x..com",
        "/users/beth@-x.com",
        "/users/a@b@x.com",
        "/users/@x.com",
        "/users/beth%40x.com",
        "/users/beth@x.com%2F..",
        "/users/beth@x.com;v=1",
        "/users/beth@x.com:80",
        "/users/beth@x.com\\..",
        "/users/%2e%2e@x.com",
    ] {
        assert_eq!(taken(refused), None, "{refused}");
    }
    let template = PathTemplate::parse("/users/{email:email}").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(template.to_string(), "/users/{email:email}");
    assert_eq!(template.shape(), "/users/{:email}");
}
