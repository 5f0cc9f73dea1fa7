//! The one HTTP(S) stack of the programs and the CLI, for S3 and for the
//! check webhooks alike: hyper with rustls (ring), the system's roots
//! (`SSL_CERT_FILE` too) plus a source's `ca_bundle`, and the proxies the
//! environment names, as Concourse gives resource containers on sites whose
//! workers reach S3 and the ATC only through one
//! (`atc/worker/gardenruntime/worker.go`): `http_proxy`, `https_proxy`,
//! `all_proxy` and `no_proxy`, either case; `no_proxy` with hosts, domains
//! (`.example.com`), IP addresses, CIDRs (`10.0.0.0/8`) and `*` (hyper-util's
//! matcher, curl's rules). The instance metadata service is never reached
//! through a proxy (a link-local address no proxy can reach).

use aws_smithy_async::rt::sleep::SharedAsyncSleep;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::{Connector, tls};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use std::sync::OnceLock;

/// Whether requests go through the proxies the environment names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Through `http_proxy` / `https_proxy`, unless `no_proxy` says not.
    Environment,
    /// Straight to the server (the instance metadata service).
    Direct,
}

/// The TLS settings: the system's roots, plus the PEM certificates of
/// `ca_bundle` when given.
pub(crate) fn tls_context(ca_bundle: Option<&str>) -> Result<tls::TlsContext, String> {
    let mut trust = tls::TrustStore::default();
    if let Some(pem) = ca_bundle {
        trust = trust.with_pem_certificate(pem.as_bytes().to_vec());
    }
    tls::TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| e.to_string())
}

/// A connector with `tls`, routed as `route` says.
pub(crate) fn connector(
    tls: &tls::TlsContext,
    route: Route,
    settings: Option<&HttpConnectorSettings>,
    sleep: Option<SharedAsyncSleep>,
) -> Connector {
    let mut b = Connector::builder();
    if route == Route::Environment && !bypasses_all(no_proxy().as_deref()) {
        b = b.proxy_config(ProxyConfig::from_env());
    }
    b.set_connector_settings(settings.cloned());
    b.set_sleep_impl(sleep);
    b.tls_provider(tls::Provider::Rustls(
        tls::rustls_provider::CryptoMode::Ring,
    ))
    .tls_context(tls.clone())
    .build()
}

/// `NO_PROXY`, else `no_proxy`: the first one set, as the matcher reads it.
fn no_proxy() -> Option<String> {
    ["NO_PROXY", "no_proxy"]
        .iter()
        .find_map(|k| std::env::var(k).ok())
}

/// Whether a `no_proxy` value sends every host around the proxy: an entry
/// `*` (curl's rule; the matcher applies it to names, not to addresses).
fn bypasses_all(no_proxy: Option<&str>) -> bool {
    no_proxy.is_some_and(|v| v.split(',').any(|e| e.trim() == "*"))
}

/// The S3 client's HTTP client: one connector (and its connection pool)
/// for the life of the client, made with the settings of its first
/// request (every operation of a store shares its timeouts).
#[derive(Debug)]
struct Client {
    tls: tls::TlsContext,
    route: Route,
    made: OnceLock<SharedHttpConnector>,
}

impl HttpClient for Client {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.made
            .get_or_init(|| {
                let c = connector(
                    &self.tls,
                    self.route,
                    Some(settings),
                    components.sleep_impl(),
                );
                SharedHttpConnector::new(c)
            })
            .clone()
    }
}

/// An HTTP client for the AWS SDK with `tls`, routed as `route` says.
pub(crate) fn http_client(tls: &tls::TlsContext, route: Route) -> SharedHttpClient {
    SharedHttpClient::new(Client {
        tls: tls.clone(),
        route,
        made: OnceLock::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::bypasses_all;

    #[test]
    fn a_star_sends_every_host_around_the_proxy() {
        assert!(bypasses_all(Some("*")));
        assert!(bypasses_all(Some("example.com, * ")));
        assert!(!bypasses_all(Some("*.example.com")));
        assert!(!bypasses_all(Some("")));
        assert!(!bypasses_all(None));
    }
}
