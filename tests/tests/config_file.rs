//! warren.conf as an operator writes it: a key nobody reads or a value that does not parse
//! stops the node at boot with one line naming the key and its line, as RabbitMQ refuses to
//! boot, instead of being ignored.

use warren_tests::{Node, TempDir};

fn boot_with(config: &str) -> (std::process::ExitStatus, String) {
    let dir = TempDir::new("conf");
    let mut node = Node::new("conf", &dir.0);
    node.config = config.to_string();
    let out = node.run_server_expecting_exit();
    out.unwrap_or_else(|| panic!("warren-server kept running with config {config:?}"))
}

#[test]
fn a_misspelt_key_stops_the_node_at_boot_naming_it() {
    let (status, err) = boot_with("heartbeat = 30\nconsumer_timout = 1000\n");
    assert!(!status.success());
    assert!(
        err.contains("warren.conf:2: unknown key 'consumer_timout'"),
        "stderr: {err}"
    );
}

#[test]
fn a_key_of_an_unknown_plugin_stops_the_node_but_a_known_plugins_key_does_not() {
    let (status, err) = boot_with("prometheus.tcp.port = 15693\nmanagment.tcp.port = 15673\n");
    assert!(!status.success());
    assert!(
        err.contains("unknown key 'managment.tcp.port'"),
        "stderr: {err}"
    );
    assert!(!err.contains("prometheus"), "stderr: {err}");
}

#[test]
fn a_bad_value_stops_the_node_naming_key_and_value() {
    for (config, key) in [
        ("consumer_timeout = 30min\n", "consumer_timeout"),
        (
            "warren.message_store.fsync = sometimes\n",
            "warren.message_store.fsync",
        ),
        ("heartbeat = -1\n", "heartbeat"),
    ] {
        let (status, err) = boot_with(config);
        assert!(!status.success(), "{config}");
        assert!(
            err.contains(&format!("for key '{key}'")) && err.contains("warren.conf:1"),
            "{config}: stderr: {err}"
        );
    }
}

#[test]
fn the_keys_warren_documents_all_boot() {
    let dir = TempDir::new("conf-ok");
    let mut node = Node::new("conf-ok", &dir.0);
    node.config = "heartbeat = 30\n\
                   consumer_timeout = 900000\n\
                   warren.message_store.fsync = true\n\
                   plugins.call_timeout_ms = 500\n\
                   auth_backends.1 = internal\n\
                   loopback_users.guest = true\n\
                   log.console.level = warning\n\
                   prometheus.tcp.port = 15699\n"
        .to_string();
    node.start();
    let out = node.ctl_ok(&["status"]);
    assert!(out.contains(&node.full_name()), "{out}");
}
