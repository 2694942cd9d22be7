//! `palisade serve`: settings (see [`crate::config`]), logging, listeners, and graceful
//! shutdown on SIGTERM or Ctrl-C.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::ServeFlags;
use crate::node::Node;

/// Runs a node until SIGTERM or Ctrl-C.
pub fn run(flags: ServeFlags) -> ExitCode {
    let cfg = match flags.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("palisade serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (filter, from) = match std::env::var("RUST_LOG") {
        Ok(f) => (f, "RUST_LOG"),
        Err(_) => (cfg.log_level.clone(), "log_level"),
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("palisade serve: {from} {filter:?} is not a valid log filter: {e}");
            return ExitCode::FAILURE;
        }
    };
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cfg.log_format {
        crate::config::LogFormat::Text => logs.init(),
        // One JSON object a line, the event's fields flattened beside `message`.
        crate::config::LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match rt.block_on(serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("palisade serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: crate::config::Config) -> anyhow::Result<()> {
    raise_open_file_limit(&cfg);
    let client = tokio::net::TcpListener::bind(&cfg.listen_client)
        .await
        .with_context(|| format!("cannot listen on {} (--listen-client)", cfg.listen_client))?;
    let peer = tokio::net::TcpListener::bind(&cfg.listen_peer)
        .await
        .with_context(|| format!("cannot listen on {} (--listen-peer)", cfg.listen_peer))?;
    // Before the node starts: a TLS file that cannot be used stops it here, named.
    let tls = crate::tls::ListenerTls::load(&cfg).context("cannot set up TLS")?;
    tls.watch();
    let node = Node::start(cfg.clone()).await?;
    tracing::info!(
        node_id = cfg.node_id,
        client = %cfg.listen_client,
        peer = %cfg.listen_peer,
        data_dir = %cfg.data_dir.display(),
        "palisade node serving"
    );
    // Stop on a signal, or when the node cannot go on (a replaced disk refused, a storage
    // failure): then the process exits with an error, so an orchestrator sees it.
    let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
    let stop = {
        let (node, failed) = (node.clone(), failed.clone());
        async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                why = node.failed() => *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why),
            }
        }
    };
    crate::http::serve(node.clone(), client, peer, tls, stop).await?;
    tracing::info!("shutting down");
    node.shutdown().await;
    let why = failed.lock().unwrap_or_else(|e| e.into_inner()).take();
    match why {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

/// Raises the soft limit on open files to the hard limit: every connection is a file, and
/// running out of them makes accepts (and file opens) fail. Logs the limit, and warns when
/// it is below what the connection caps allow.
fn raise_open_file_limit(cfg: &crate::config::Config) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current != limit.maximum {
        let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(soft = ?limit.current, hard = ?limit.maximum, "cannot raise the open-file limit: {e}");
        }
    }
    let limit = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    tracing::info!(soft = %show(limit.current), hard = %show(limit.maximum), "open-file limit");
    // Connections, plus a margin for the data dir, peers' outgoing connections and the runtime.
    let wanted = (cfg.max_client_connections + cfg.max_peer_inflight) as u64 + 128;
    if let Some(soft) = limit.current.filter(|&soft| soft < wanted) {
        tracing::warn!(
            "the open-file limit ({soft}) is below max_client_connections ({}) + max_peer_inflight ({}) + 128: \
             accepts may fail for want of file descriptors before the caps refuse connections \
             (raise the limit, e.g. `ulimit -n`, or lower the caps)",
            cfg.max_client_connections,
            cfg.max_peer_inflight,
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
