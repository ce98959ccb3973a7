//! The `[fix]` keys and `targets[].comp_ids`: parsed, defaulted, checked, explained.

use crate::config::{parse_toml_str, ConfigErrors, Loaded};

fn load(text: &str) -> Result<Loaded, ConfigErrors> {
    parse_toml_str(text, "/etc/fix.toml")
}

#[test]
fn off_by_default() {
    let l = load("[[targets]]\naddress = \"10.0.0.5\"\n").unwrap();
    assert!(!l.settings.fix.enabled());
    assert_eq!(l.settings.fix.target_comp_ids, [Vec::<String>::new()]);
    let text = l.explain();
    assert!(text.contains("[fix]"), "{text}");
    assert!(text.contains("capture = false"), "{text}");
}

#[test]
fn the_fix_keys_parse_and_explain_with_their_origin() {
    let l = load(
        r#"
        [[targets]]
        address = "10.0.0.5"
        comp_ids = ["VENUE"]
        [[targets]]
        address = "10.0.0.6"
        [fix]
        capture = true
        our_comp_ids = ["GW1", "GW2"]
        [[fix.logs]]
        path = "/var/log/qf/*.messages.log"
        "#,
    )
    .unwrap();
    let f = &l.settings.fix;
    assert!(f.enabled() && f.capture);
    assert_eq!(f.our_comp_ids, ["GW1", "GW2"]);
    assert_eq!(f.log_paths(), ["/var/log/qf/*.messages.log"]);
    assert_eq!(f.target_comp_ids, [vec!["VENUE".to_string()], vec![]]);
    let text = l.explain();
    assert!(text.contains("our_comp_ids = [\"GW1\", \"GW2\"]"), "{text}");
    assert!(text.contains("comp_ids = [\"VENUE\"]"), "{text}");
    assert!(
        text.contains("path = \"/var/log/qf/*.messages.log\""),
        "{text}"
    );
    // What `config` prints is itself a valid configuration.
    let again = load(&text).unwrap();
    assert_eq!(again.settings.fix, l.settings.fix);
}

#[test]
fn bad_fix_values_are_all_reported_with_key_value_and_origin() {
    let e = load(
        r#"
        [[targets]]
        address = "10.0.0.5"
        comp_ids = ["A B"]
        [fix]
        capture = "maybe"
        surprise = 1
        [[fix.logs]]
        path = "/var/log/[oops"
        "#,
    )
    .unwrap_err();
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    for k in [
        "targets[0].comp_ids",
        "fix.capture",
        "fix.surprise",
        "fix.logs[0].path",
    ] {
        assert!(keys.contains(&k), "{k} missing from {e}");
    }
    let path = e.iter().find(|e| e.key == "fix.logs[0].path").unwrap();
    assert_eq!(path.value.as_deref(), Some("\"/var/log/[oops\""));
    assert!(path.message.contains("glob"), "{}", path.message);
    assert!(path.origin.is_some());
}

#[test]
fn a_log_without_our_comp_ids_is_refused() {
    let e = load("[[targets]]\naddress = \"10.0.0.5\"\n[[fix.logs]]\npath = \"/tmp/x.log\"\n")
        .unwrap_err();
    let err = e.iter().find(|e| e.key == "fix.our_comp_ids").unwrap();
    assert!(err.message.contains("our CompIDs"), "{}", err.message);
}

#[test]
fn a_log_table_without_a_path_is_reported_once() {
    let e =
        load("[[targets]]\naddress = \"10.0.0.5\"\n[fix]\nour_comp_ids = \"GW\"\n[[fix.logs]]\n")
            .unwrap_err();
    let errs: Vec<_> = e.iter().filter(|e| e.key == "fix.logs[0].path").collect();
    assert_eq!(errs.len(), 1, "{e}");
    assert!(
        errs[0].message.contains("needs a path"),
        "{}",
        errs[0].message
    );
}
