//! The `prometheus` plugin: serves the node's statistics in the Prometheus
//! text exposition format (version 0.0.4) on its own port
//! (`prometheus.tcp.port`, default 15692), under RabbitMQ's metric names
//! where RabbitMQ has one.
//!
//! * `GET /metrics`: the metrics.
//! * `GET /`: a short index pointing at `/metrics`.
//! * Other paths are 404; other methods are 405.
//!
//! Node-wide values carry no labels, as on RabbitMQ's aggregated `/metrics`
//! endpoint; join them with `rabbitmq_identity_info` to get the node name.
//! Per-queue values are `rabbitmq_detailed_queue_*{vhost, queue}`, as on
//! RabbitMQ's `/metrics/detailed` endpoint, so they never mix with the
//! unlabelled totals of the same family.
//!
//! All formatting lives in [`render`], a pure function over [`NodeMetrics`]
//! and [`QueueMetrics`], so it is tested natively.

use std::fmt::Write as _;

use warren_sdk::http::{Guest, Request, Response, stats};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Node-wide values, as the `stats` interface reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMetrics {
    pub node: String,
    /// The cluster's name (`rabbitmq_cluster` label).
    pub cluster: String,
    pub connections: u32,
    pub channels: u32,
    pub queues: u32,
    pub exchanges: u32,
    pub consumers: u32,
    pub messages_published_total: u64,
    pub messages_delivered_total: u64,
    pub messages_acknowledged_total: u64,
    pub messages_confirmed_total: u64,
    pub messages_unroutable_total: u64,
    pub memory_used_bytes: u64,
    pub uptime_seconds: u64,
}

/// One queue's values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueMetrics {
    pub vhost: String,
    pub name: String,
    pub queue_type: String,
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
    pub consumers: u32,
}

impl From<stats::NodeStats> for NodeMetrics {
    fn from(s: stats::NodeStats) -> Self {
        Self {
            node: s.node,
            cluster: String::new(),
            connections: s.connections,
            channels: s.channels,
            queues: s.queues,
            exchanges: s.exchanges,
            consumers: s.consumers,
            messages_published_total: s.messages_published_total,
            messages_delivered_total: s.messages_delivered_total,
            messages_acknowledged_total: s.messages_acknowledged_total,
            messages_confirmed_total: s.messages_confirmed_total,
            messages_unroutable_total: s.messages_unroutable_total,
            memory_used_bytes: s.memory_used_bytes,
            uptime_seconds: s.uptime_seconds,
        }
    }
}

impl From<stats::QueueStats> for QueueMetrics {
    fn from(q: stats::QueueStats) -> Self {
        Self {
            vhost: q.vhost,
            name: q.name,
            queue_type: q.queue_type,
            messages_ready: q.messages_ready,
            messages_unacknowledged: q.messages_unacknowledged,
            consumers: q.consumers,
        }
    }
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes `# HELP` and `# TYPE` for one family. (Help texts here are fixed
/// and contain neither backslashes nor line feeds, so need no escaping.)
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One family with a single unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// One family with a sample per queue.
fn per_queue(
    out: &mut String,
    queues: &[QueueMetrics],
    name: &str,
    help: &str,
    value: impl Fn(&QueueMetrics) -> u64,
) {
    family(out, name, "gauge", help);
    for q in queues {
        let _ = writeln!(
            out,
            "{name}{{vhost=\"{}\",queue=\"{}\"}} {}",
            escape_label_value(&q.vhost),
            escape_label_value(&q.name),
            value(q)
        );
    }
}

/// The text exposition of one node's metrics.
pub fn render(node: &NodeMetrics, queues: &[QueueMetrics]) -> String {
    let mut out = String::with_capacity(4096 + queues.len() * 256);

    family(
        &mut out,
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    );
    let node_label = escape_label_value(&node.node);
    let cluster_label = escape_label_value(&node.cluster);
    let _ = writeln!(
        out,
        "rabbitmq_identity_info{{rabbitmq_node=\"{node_label}\",rabbitmq_cluster=\"{cluster_label}\"}} 1"
    );

    let gauges: [(&str, &str, u64); 4] = [
        (
            "rabbitmq_connections",
            "Connections currently open",
            node.connections.into(),
        ),
        (
            "rabbitmq_channels",
            "Channels currently open",
            node.channels.into(),
        ),
        ("rabbitmq_queues", "Queues available", node.queues.into()),
        (
            "rabbitmq_consumers",
            "Consumers currently connected",
            node.consumers.into(),
        ),
    ];
    for (name, help, value) in gauges {
        single(&mut out, name, "gauge", help, value);
    }
    single(
        &mut out,
        "warren_exchanges",
        "gauge",
        "Exchanges available",
        node.exchanges.into(),
    );

    let ready: u64 = queues.iter().map(|q| q.messages_ready).sum();
    let unacked: u64 = queues.iter().map(|q| q.messages_unacknowledged).sum();
    single(
        &mut out,
        "rabbitmq_queue_messages_ready",
        "gauge",
        "Messages ready to be delivered to consumers",
        ready,
    );
    single(
        &mut out,
        "rabbitmq_queue_messages_unacked",
        "gauge",
        "Messages delivered to consumers but not yet acknowledged",
        unacked,
    );
    single(
        &mut out,
        "rabbitmq_queue_messages",
        "gauge",
        "Sum of ready and unacknowledged messages - total queue depth",
        ready.saturating_add(unacked),
    );

    let counters: [(&str, &str, u64); 5] = [
        (
            "rabbitmq_global_messages_received_total",
            "Total number of messages received from publishers",
            node.messages_published_total,
        ),
        (
            "rabbitmq_global_messages_delivered_total",
            "Total number of messages delivered to consumers",
            node.messages_delivered_total,
        ),
        (
            "rabbitmq_global_messages_acknowledged_total",
            "Total number of messages acknowledged by consumers",
            node.messages_acknowledged_total,
        ),
        (
            "rabbitmq_global_messages_confirmed_total",
            "Total number of messages confirmed to publishers",
            node.messages_confirmed_total,
        ),
        (
            "rabbitmq_global_messages_unroutable_dropped_total",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            node.messages_unroutable_total,
        ),
    ];
    for (name, help, value) in counters {
        single(&mut out, name, "counter", help, value);
    }

    single(
        &mut out,
        "rabbitmq_process_resident_memory_bytes",
        "gauge",
        "Memory used in bytes",
        node.memory_used_bytes,
    );
    single(
        &mut out,
        "rabbitmq_erlang_uptime_seconds",
        "gauge",
        "Node uptime",
        node.uptime_seconds,
    );

    family(
        &mut out,
        "rabbitmq_detailed_queue_info",
        "gauge",
        "A queue's type, one series per queue",
    );
    for q in queues {
        let _ = writeln!(
            out,
            "rabbitmq_detailed_queue_info{{vhost=\"{}\",queue=\"{}\",queue_type=\"{}\"}} 1",
            escape_label_value(&q.vhost),
            escape_label_value(&q.name),
            escape_label_value(&q.queue_type)
        );
    }
    per_queue(
        &mut out,
        queues,
        "rabbitmq_detailed_queue_messages_ready",
        "Messages ready to be delivered to consumers",
        |q| q.messages_ready,
    );
    per_queue(
        &mut out,
        queues,
        "rabbitmq_detailed_queue_messages_unacked",
        "Messages delivered to consumers but not yet acknowledged",
        |q| q.messages_unacknowledged,
    );
    per_queue(
        &mut out,
        queues,
        "rabbitmq_detailed_queue_messages",
        "Sum of ready and unacknowledged messages - total queue depth",
        |q| q.messages_ready.saturating_add(q.messages_unacknowledged),
    );
    per_queue(
        &mut out,
        queues,
        "rabbitmq_detailed_queue_consumers",
        "Consumers on a queue",
        |q| q.consumers.into(),
    );

    out
}

const INDEX: &str = "<!DOCTYPE html>\n<html><head><title>Warren Prometheus exporter</title></head>\n\
<body><h1>Warren Prometheus exporter</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n";

/// Answers one request; `metrics` is called only for `GET /metrics`.
pub fn respond(method: &str, path: &str, metrics: impl FnOnce() -> String) -> Response {
    if method != "GET" {
        return text(405, "method not allowed\n", &[("allow", "GET")]);
    }
    // Ignore the query string (e.g. `/metrics?family=x`) and any fragment.
    match path.split(['?', '#']).next().unwrap_or_default() {
        "/metrics" => Response {
            status: 200,
            headers: vec![("content-type".into(), CONTENT_TYPE.into())],
            body: metrics().into_bytes(),
        },
        "/" => Response {
            status: 200,
            headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
            body: INDEX.as_bytes().to_vec(),
        },
        _ => text(404, "not found\n", &[]),
    }
}

fn text(status: u16, body: &str, extra: &[(&str, &str)]) -> Response {
    let mut headers = vec![(
        "content-type".to_string(),
        "text/plain; charset=utf-8".to_string(),
    )];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Response {
        status,
        headers,
        body: body.as_bytes().to_vec(),
    }
}

/// The exported HTTP handler.
pub struct Prometheus;

impl Guest for Prometheus {
    fn handle(request: Request) -> Response {
        respond(&request.method, &request.path, || {
            let node = NodeMetrics {
                cluster: stats::cluster_name(),
                ..NodeMetrics::from(stats::node())
            };
            let queues: Vec<QueueMetrics> = stats::queues()
                .into_iter()
                .map(QueueMetrics::from)
                .collect();
            render(&node, &queues)
        })
    }
}

warren_sdk::export_http_handler!(Prometheus);

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (NodeMetrics, Vec<QueueMetrics>) {
        let node = NodeMetrics {
            node: "rabbit@host".into(),
            cluster: "production".into(),
            connections: 3,
            channels: 5,
            queues: 2,
            exchanges: 9,
            consumers: 1,
            messages_published_total: 100,
            messages_delivered_total: 80,
            messages_acknowledged_total: 70,
            messages_confirmed_total: 60,
            messages_unroutable_total: 4,
            memory_used_bytes: 123_456,
            uptime_seconds: 42,
        };
        let queues = vec![
            QueueMetrics {
                vhost: "/".into(),
                name: "orders".into(),
                queue_type: "classic".into(),
                messages_ready: 10,
                messages_unacknowledged: 2,
                consumers: 1,
            },
            QueueMetrics {
                vhost: "prod".into(),
                name: "we\"ird\\q\nx".into(),
                queue_type: "quorum".into(),
                messages_ready: 5,
                messages_unacknowledged: 0,
                consumers: 0,
            },
        ];
        (node, queues)
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape_label_value("plain"), "plain");
        assert_eq!(escape_label_value(r#"a"b"#), r#"a\"b"#);
        assert_eq!(escape_label_value(r"a\b"), r"a\\b");
        assert_eq!(escape_label_value("a\nb"), r"a\nb");
        assert_eq!(escape_label_value("\\\"\n"), r#"\\\"\n"#);
        // Everything else, including non-ASCII and tabs, passes through.
        assert_eq!(escape_label_value("é\tü"), "é\tü");
    }

    #[test]
    fn sample_output() {
        let (node, queues) = sample();
        let out = render(&node, &queues);
        let expected_lines = [
            "# HELP rabbitmq_identity_info RabbitMQ node & cluster identity info",
            "# TYPE rabbitmq_identity_info untyped",
            r#"rabbitmq_identity_info{rabbitmq_node="rabbit@host",rabbitmq_cluster="production"} 1"#,
            "# TYPE rabbitmq_connections gauge",
            "rabbitmq_connections 3",
            "rabbitmq_channels 5",
            "rabbitmq_queues 2",
            "rabbitmq_consumers 1",
            "warren_exchanges 9",
            "rabbitmq_queue_messages_ready 15",
            "rabbitmq_queue_messages_unacked 2",
            "rabbitmq_queue_messages 17",
            "# TYPE rabbitmq_global_messages_received_total counter",
            "rabbitmq_global_messages_received_total 100",
            "rabbitmq_global_messages_delivered_total 80",
            "rabbitmq_global_messages_acknowledged_total 70",
            "rabbitmq_global_messages_confirmed_total 60",
            "rabbitmq_global_messages_unroutable_dropped_total 4",
            "rabbitmq_process_resident_memory_bytes 123456",
            "rabbitmq_erlang_uptime_seconds 42",
            r#"rabbitmq_detailed_queue_info{vhost="/",queue="orders",queue_type="classic"} 1"#,
            r#"rabbitmq_detailed_queue_messages_ready{vhost="/",queue="orders"} 10"#,
            r#"rabbitmq_detailed_queue_messages_ready{vhost="prod",queue="we\"ird\\q\nx"} 5"#,
            r#"rabbitmq_detailed_queue_messages_unacked{vhost="/",queue="orders"} 2"#,
            r#"rabbitmq_detailed_queue_messages{vhost="/",queue="orders"} 12"#,
            r#"rabbitmq_detailed_queue_consumers{vhost="prod",queue="we\"ird\\q\nx"} 0"#,
        ];
        let lines: Vec<&str> = out.lines().collect();
        for want in expected_lines {
            assert!(lines.contains(&want), "missing line {want:?} in:\n{out}");
        }
        assert!(out.ends_with('\n'));
    }

    #[test]
    fn output_is_well_formed() {
        let (node, queues) = sample();
        let out = render(&node, &queues);
        let mut typed = Vec::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!typed.contains(&name), "family {name} declared twice");
                typed.push(name);
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            // A sample: its metric name belongs to the last declared family,
            // and the value parses as a number.
            let name_end = line.find(['{', ' ']).unwrap();
            assert_eq!(&line[..name_end], *typed.last().unwrap(), "{line}");
            let value = line.rsplit(' ').next().unwrap();
            value.parse::<f64>().unwrap();
        }
    }

    #[test]
    fn empty_node_has_no_per_queue_samples() {
        let out = render(&NodeMetrics::default(), &[]);
        assert!(out.contains("rabbitmq_queue_messages_ready 0\n"));
        assert!(out.contains("# TYPE rabbitmq_detailed_queue_messages_ready gauge\n"));
        assert!(!out.contains("rabbitmq_detailed_queue_messages_ready{"));
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn routes_requests() {
        let r = respond("GET", "/metrics", || "x 1\n".into());
        assert_eq!(r.status, 200);
        assert_eq!(header(&r, "content-type"), Some(CONTENT_TYPE));
        assert_eq!(r.body, b"x 1\n");

        let r = respond("GET", "/metrics?family=x", || "x 1\n".into());
        assert_eq!(r.status, 200);

        let r = respond("GET", "/", || unreachable!());
        assert_eq!(r.status, 200);
        assert!(String::from_utf8(r.body).unwrap().contains("/metrics"));

        let r = respond("GET", "/nope", || unreachable!());
        assert_eq!(r.status, 404);
        let r = respond("GET", "/metrics/detailed", || unreachable!());
        assert_eq!(r.status, 404);

        let r = respond("POST", "/metrics", || unreachable!());
        assert_eq!(r.status, 405);
        assert_eq!(header(&r, "allow"), Some("GET"));
        let r = respond("DELETE", "/elsewhere", || unreachable!());
        assert_eq!(r.status, 405);
    }
}
