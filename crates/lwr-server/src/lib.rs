//! The lwr server: a thin axum layer over the store and the queue.
//!
//! The server holds no per-project logic. It stores graphs, hands ready jobs to nodes that
//! long-poll for them, records results, and wakes whoever waits for a change. Handlers in
//! [`routes`] only translate HTTP to calls on [`Queue`], which holds the in-memory wake-ups
//! and is usable (and tested) without sockets.

pub mod api;
pub mod artifact;
mod artifacts;
pub mod duty;
mod error;
pub mod followed;
pub mod listen;
pub mod live;
pub mod logs;
pub mod metrics;
mod openapi;
pub mod poller;
mod private;
pub mod provider;
pub mod queue;
pub mod retention;
pub mod routes;
pub mod shared_live;
mod staged;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lwr_model::timing;
use lwr_store::Store;
use thiserror::Error;
use tokio::net::TcpListener;

pub use api::{openapi, router};
pub use artifacts::sweep_once;
pub use error::ApiError;
pub use queue::{Queue, Want};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// A run whose node does not renew it for this long ends as `exception` (claim-expired).
    pub lease: Duration,
    /// Largest log a node may upload.
    pub max_log_bytes: u64,
    /// Largest artifact a node may upload.
    pub max_artifact_bytes: u64,
    /// How long artifacts are kept when their job does not say (`expires` in lwr.yml).
    pub artifact_expiry: Duration,
    /// How often expired artifacts are deleted.
    pub artifact_sweep: Duration,
    /// Graphs with no activity for this long are removed (`--keep`); `None`: never.
    pub keep: Option<Duration>,
    /// Where artifacts live: `dir` (under the data dir), `dir:///path` or `s3://bucket/prefix`.
    pub artifact_store: String,
    /// Check a bearer token on every request but the public ones.
    pub auth: bool,
    /// Where nodes come from (see [`provider`]).
    pub provider: provider::ProviderConfig,
    /// Routes served beside `/v1` (the web app at `/`), built from the server's state; a
    /// hook rather than a dependency, so the web app's crate can depend on this one.
    pub web: Option<fn(Arc<AppState>) -> axum::Router>,
    /// The URL clients reach the server at (`https://ci.example.com/lwr` behind a TLS
    /// proxy), without a trailing slash: the start of every absolute URL the server writes.
    /// `None`: `http://` and the request's Host.
    pub public_url: Option<String>,
}

impl Config {
    pub fn new(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            lease: timing::DEFAULT_LEASE,
            max_log_bytes: 1 << 30,
            max_artifact_bytes: 10 << 30,
            artifact_expiry: Duration::from_secs(30 * 24 * 3600),
            artifact_sweep: timing::DEFAULT_ARTIFACT_SWEEP,
            keep: Some(timing::DEFAULT_KEEP),
            artifact_store: "dir".into(),
            auth: false,
            provider: Default::default(),
            web: None,
            public_url: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create data dir {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] lwr_store::StoreError),
    #[error(transparent)]
    Artifacts(#[from] artifact::ArtifactError),
    #[error(transparent)]
    Provider(#[from] provider::ProviderError),
    #[error("server stopped: {0}")]
    Serve(#[source] std::io::Error),
}

/// Shared state of a running server.
pub struct AppState {
    pub queue: Queue,
    pub config: Config,
    pub artifacts: Arc<dyn artifact::ArtifactStore>,
    pub poll: Arc<poller::PollStatus>,
    /// Logs of running jobs streamed to viewers.
    pub live: Arc<live::LiveLogs>,
    /// Artifact uploads waiting for their commit.
    pub staged: staged::Staging,
    /// Listings that may be large (every job, every push) served at once: each holds its
    /// whole answer in memory, so forty at once must queue, not take the server's memory.
    pub heavy_reads: tokio::sync::Semaphore,
    /// Which of the once-per-fleet duties (provider, sweeps, polling) this server does now.
    pub duties: Arc<duty::Duties>,
}

/// Large listings served at once; the rest wait (see [`AppState::heavy_reads`]).
const HEAVY_READS: usize = 4;
/// Longest a large listing waits for its turn before it is refused with 503 and
/// `Retry-After`: long enough to smooth a burst, short enough that forty readers are told
/// to come back instead of piling up (each waiting one holds a connection and a request).
const HEAVY_READ_WAIT: Duration = Duration::from_secs(1);
/// What such a 503 says in `Retry-After`, in seconds.
const HEAVY_READ_RETRY: u64 = 2;
/// Most jobs one `GET /v1/jobs` answers (a few megabytes): with [`HEAVY_READS`] served at
/// once, what listings hold in memory is bounded (`limit` is clamped to it; a graph's own
/// listing is bounded by the graph's size limit).
pub(crate) const MAX_LISTED_JOBS: u32 = 20_000;

impl AppState {
    /// Whether live logs go through the database (PostgreSQL: servers may share it) instead
    /// of this server's spool (SQLite: one server).
    pub fn shared_live(&self) -> bool {
        self.queue.store().dialect() == lwr_store::Dialect::Postgres
    }

    /// A turn to serve a large listing.
    pub(crate) async fn heavy_read(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        match tokio::time::timeout(HEAVY_READ_WAIT, self.heavy_reads.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{HEAVY_READS} large listings are being served: try again in \
                     {HEAVY_READ_RETRY} s"
                ),
            )
            .retry_after(HEAVY_READ_RETRY)),
        }
    }
}

/// What a serving future ends when it ends or is dropped.
struct StopOnDrop {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    provided: Option<Arc<dyn provider::Provider>>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(provider) = &self.provided {
            provider.stop_all();
        }
    }
}

/// A provider's scaler task and the provider, to stop its nodes with the server.
type Provided = (tokio::task::JoinHandle<()>, Arc<dyn provider::Provider>);

/// Starts the scaler of a provider other than `static`.
fn start_provider(
    state: &Arc<AppState>,
    local: SocketAddr,
) -> Result<Option<Provided>, ServerError> {
    use provider::{Local, Provider, ProviderKind, Scripts};
    let provider: Arc<dyn Provider> = match &state.config.provider.kind {
        ProviderKind::Static => return Ok(None),
        ProviderKind::Local => {
            let bin = match std::env::current_exe() {
                Ok(bin) => bin,
                Err(e) => {
                    tracing::error!("local provider: cannot find this binary to start nodes: {e}");
                    return Ok(None);
                }
            };
            Arc::new(Local::new(
                bin,
                &state.config.data_dir,
                state.config.provider.user.as_deref(),
            )?)
        }
        ProviderKind::Command { up, down } => Arc::new(Scripts::new(up.clone(), down.clone())),
    };
    let task = tokio::spawn(provider::scale(
        state.clone(),
        provider.clone(),
        format!("http://{local}"),
    ));
    Ok(Some((task, provider)))
}

/// Binds `addr` and returns the bound address and a future that serves until `shutdown`
/// resolves. Binding first lets callers print the real port before serving.
pub async fn bind(
    addr: SocketAddr,
    store: Store,
    config: Config,
) -> Result<(SocketAddr, impl Future<Output = Result<(), ServerError>>), ServerError> {
    std::fs::create_dir_all(config.data_dir.join("logs")).map_err(|source| {
        ServerError::DataDir {
            dir: config.data_dir.clone(),
            source,
        }
    })?;
    // The data dir holds the database (with the job token key) and every log: its owner's
    // only, whatever the umask made it.
    private::secure_data_dir(&config.data_dir).map_err(|source| ServerError::DataDir {
        dir: config.data_dir.clone(),
        source,
    })?;
    let limits = listen::Limits::for_nofile(listen::raise_nofile());
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Listen { addr, source })?;
    // Listen before serving, so no change another server makes after we start is missed.
    let events = store.events().await?;
    if config.auth {
        // Now, not at the first claim: a claim that committed must not fail afterwards.
        store.load_job_token_key().await?;
    }
    let artifacts = artifact::open(&config.artifact_store, &config.data_dir)?;
    let live = live::LiveLogs::open(&config.data_dir, config.max_log_bytes).map_err(|source| {
        ServerError::DataDir {
            dir: config.data_dir.join("spool"),
            source,
        }
    })?;
    tracing::info!("artifacts in {}", artifacts.describe());
    let duties = Arc::new(duty::Duties::new(
        store.clone(),
        duty::holder_name(&config.data_dir),
    ));
    let queue = Queue::new(store, config.lease);
    queue.on_start().await?;
    // Before the tasks that do them: a lone server does its duties from its first moment.
    let keeper = duties.start().await;
    let state = Arc::new(AppState {
        queue,
        config,
        artifacts,
        poll: Default::default(),
        live: Arc::new(live),
        staged: Default::default(),
        heavy_reads: tokio::sync::Semaphore::new(HEAVY_READS),
        duties,
    });
    let sweeper = tokio::spawn(queue::sweep_leases(state.clone()));
    let follower = events.map(|events| {
        let state = state.clone();
        tokio::spawn(async move { state.queue.follow(events).await })
    });
    let artifact_sweeper = tokio::spawn(artifacts::sweep(state.clone()));
    let live_sweeper = tokio::spawn(routes::follow::sweep(state.clone()));
    let retainer = tokio::spawn(retention::sweep(state.clone()));
    let poller = tokio::spawn(poller::supervise(state.clone()));
    let (provider, provided) = match start_provider(&state, local)? {
        Some((task, provider)) => (Some(task), Some(provider)),
        None => (None, None),
    };
    let app = match state.config.web {
        Some(web) => router(state.clone()).merge(web(state.clone())),
        None => router(state.clone()),
    };
    // Outside the routes' own layers, so every request is counted with its route template.
    let app = app.layer(axum::middleware::from_fn_with_state(state, metrics::track));
    let mut tasks = vec![
        keeper,
        sweeper,
        artifact_sweeper,
        live_sweeper,
        retainer,
        poller,
    ];
    tasks.extend(follower);
    tasks.extend(provider);
    let serve = async move {
        // Whether serving ends or its future is dropped (the binary stops on a signal by
        // dropping it), the background tasks end and provided nodes are told to stop.
        let _stop = StopOnDrop { tasks, provided };
        listen::serve(listener, app, limits)
            .await
            .map_err(ServerError::Serve)
    };
    Ok((local, serve))
}
