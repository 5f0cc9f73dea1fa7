//! Sites whose workers reach S3 and the ATC only through a proxy: Concourse
//! gives resource containers `http_proxy`, `https_proxy` and `no_proxy`
//! (`atc/worker/gardenruntime/worker.go`). `out`, `check` and the CLI
//! reach S3 through it, the check webhooks reach the ATC through it, and
//! `no_proxy` (a host, a CIDR, `*`) goes around it. A recording forward
//! proxy on 127.0.0.1 stands in for the site's.

use crate::util::{ForwardProxy, Kind, StandInAtc, Step, TlsFront, World};
use serde_json::json;

const TOKEN: &str = "egress-webhook-token";

const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// `step` with only the given proxy variables (the machine's and the test
/// harness's removed).
fn routed(mut step: Step, vars: &[(&str, &str)]) -> Step {
    for v in PROXY_VARS {
        step = step.unset(v);
    }
    for (k, v) in vars {
        step = step.env(k, v);
    }
    step
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A put as a build runs it, with a webhook to hand off to.
fn put(w: &World, source: &serde_json::Value, params: serde_json::Value, atc: &str) -> Step {
    w.put(json!({}))
        .stdin(json!({"source": source, "params": params}))
        .build("kickstart", 7)
        .env("ATC_EXTERNAL_URL", atc)
}

mod s3 {
    use super::*;

    /// HTTPS through `https_proxy` (lowercase, as Concourse sets it): S3 behind
    /// TLS (trusted with `ca_bundle`), the ATC behind TLS (trusted through
    /// `SSL_CERT_FILE`), `out`, `check` and the CLI each tunnel through the
    /// proxy, which sees hosts and never the token; `no_proxy` with the host,
    /// a CIDR or `*` goes straight there.
    #[test]
    fn s3_and_the_atc_through_https_proxy() {
        let w = World::new(Kind::S3, "egress_https").with(json!({"webhook_token": TOKEN}));
        let dir = w.tmp.path();
        let s3 = TlsFront::start(dir, port_of(&crate::util::s3().endpoint));
        let atc = StandInAtc::start(Some(201));
        let atc_tls = TlsFront::start(dir, port_of(&atc.url));
        let proxy = ForwardProxy::start();
        let ca = std::fs::read_to_string(&s3.ca).unwrap();
        let mut source = w.source();
        source["endpoint"] = json!(s3.url);
        source["ca_bundle"] = json!(ca);
        let through = [
            ("https_proxy", proxy.url.as_str()),
            ("SSL_CERT_FILE", s3.ca.to_str().unwrap()),
        ];
        let out = routed(
            put(
                &w,
                &source,
                json!({"init": true, "check": ["at-kickstart"]}),
                &atc_tls.url,
            ),
            &through,
        )
        .run();
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(
            out.stderr.contains("asked Concourse to check at-kickstart"),
            "{}",
            out.stderr
        );
        let seen = proxy.seen();
        assert!(
            seen.contains(&format!("CONNECT 127.0.0.1:{}", port_of(&s3.url))),
            "{seen:?}"
        );
        assert!(
            seen.contains(&format!("CONNECT 127.0.0.1:{}", port_of(&atc_tls.url))),
            "{seen:?}"
        );
        assert!(seen.iter().all(|l| !l.contains(TOKEN)), "{seen:?}");
        assert_eq!(atc.seen().len(), 1, "the webhook reached the ATC");
        // check, and the CLI, through the same proxy.
        let before = proxy.seen().len();
        let versions = routed(w.check().stdin(json!({"source": source})), &through).ok();
        assert_eq!(versions[0]["revision"], "1");
        let file = dir.join("source.json");
        std::fs::write(&file, source.to_string()).unwrap();
        let shown = routed(
            w.bare_cli(&["show", "rhel8-web", "--source", file.to_str().unwrap()]),
            &through,
        )
        .run();
        assert_eq!(shown.code, Some(0), "{}", shown.stderr);
        assert!(proxy.seen().len() >= before + 2, "{:?}", proxy.seen());
        // no_proxy: the host, a CIDR, `*` (either case): around the proxy.
        for (name, rule) in [
            ("no_proxy", "127.0.0.1"),
            ("NO_PROXY", "127.0.0.0/8"),
            ("no_proxy", "*"),
            ("no_proxy", "example.com, 127.0.0.1"),
        ] {
            let before = proxy.seen().len();
            let mut vars = through.to_vec();
            vars.push((name, rule));
            let out = routed(
                put(
                    &w,
                    &source,
                    json!({"complete": 0, "check": ["at-kickstart"]}),
                    &atc_tls.url,
                ),
                &vars,
            )
            .run();
            assert_eq!(out.code, Some(0), "{rule}: {}", out.stderr);
            assert_eq!(
                proxy.seen().len(),
                before,
                "{name}={rule}: {:?}",
                proxy.seen()
            );
        }
        assert!(atc.seen().len() >= 2);
    }

    /// Plain HTTP through `HTTP_PROXY` (uppercase): the proxy forwards each
    /// request; a proxy that is down fails the put with the store named, and
    /// writes nothing.
    #[test]
    fn s3_through_http_proxy_and_a_proxy_that_is_down() {
        let w = World::new(Kind::S3, "egress_http");
        let proxy = ForwardProxy::start();
        let out = routed(
            w.put(json!({"init": true})),
            &[("HTTP_PROXY", proxy.url.as_str())],
        )
        .run();
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let s3 = crate::util::s3()
            .endpoint
            .trim_start_matches("http://")
            .to_string();
        let seen = proxy.seen();
        assert!(
            seen.iter().any(|l| l == &format!("PUT http://{s3}")),
            "{seen:?}"
        );
        assert!(
            seen.iter().any(|l| l == &format!("GET http://{s3}")),
            "{seen:?}"
        );
        let before = w.raw("state.json");
        let nothing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}", nothing.local_addr().unwrap());
        drop(nothing);
        let out = routed(
            w.put(json!({"complete": 0})),
            &[("http_proxy", dead.as_str())],
        )
        .run();
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        assert!(out.stderr.contains("rhel8-web (s3://"), "{}", out.stderr);
        assert_eq!(w.raw("state.json"), before, "nothing written");
    }
}
