//! A [`SearchIndex`] kept in a Milvus collection, for users whose collection outgrows one
//! machine: `--index milvus://HOST:PORT/COLLECTION` (or `milvus+tls://…`) wherever a local
//! directory would go.
//!
//! The collection holds one row per record: our `id` (int64 primary key, allocated by htg so
//! ids mean the same thing on every engine), the l2-normalised `vector`, `path`, `sha256` and
//! `label` (empty for none). An HNSW index with the configured `M` / `efConstruction` and the
//! L2 metric sits on `vector`; Milvus's L2 is the squared distance, which is what the local
//! index reports. The model's provenance, the HNSW parameters and the id counter live in the
//! collection's properties (`htg.*`), so a query embedded by another model is refused exactly
//! as it is locally.
//!
//! The SDK is async; this type owns a small tokio runtime and blocks on it, so callers (the
//! CLI, actix's blocking pool) see the same synchronous trait as the local index. Writes are
//! upserts keyed by our id, so a retried batch cannot duplicate rows. Credentials come from the
//! environment: `HTG_MILVUS_TOKEN`, or `HTG_MILVUS_USER` and `HTG_MILVUS_PASSWORD`;
//! `HTG_MILVUS_CA` names a CA certificate for `milvus+tls://`.
//!
//! One writing process per collection, as for a local index: the id counter is reserved in
//! blocks through the collection's properties, not with a distributed lock.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use milvus::v2::error::Error as SdkError;
use milvus::v2::prelude::*;
// The prelude brings the SDK's one-parameter `Result`; ours names its error.
use std::result::Result;

use super::error::IndexError;
use super::seam::SearchIndex;
use super::types::{Hit, HnswParams, IndexStats, Record, SearchOptions, MAX_EF};
use crate::embed::ModelId;

/// Longest path or label a row can hold (Milvus VarChar columns have a fixed maximum).
pub const MAX_PATH: usize = 4096;
/// Longest label a row can hold.
pub const MAX_LABEL: usize = 1024;

/// Rows per insert request: well under gRPC's message limit at any embedding size we ship.
const INSERT_BATCH: usize = 512;
/// Rows per query page (Milvus caps `offset + limit` at 16384).
const QUERY_PAGE: i64 = 16_384;
/// Ids reserved per update of the `htg.next_id` property.
const ID_BLOCK: u64 = 4096;
/// Attempts for one write batch on a transient failure (the SDK also retries each RPC).
const WRITE_ATTEMPTS: u32 = 4;

const F_ID: &str = "id";
const F_VECTOR: &str = "vector";
const F_PATH: &str = "path";
const F_SHA: &str = "sha256";
const F_LABEL: &str = "label";

const P_FORMAT: &str = "htg.format";
const P_MODEL: &str = "htg.model";
const P_MODEL_PATH: &str = "htg.model_path";
const P_M: &str = "htg.m";
const P_EFC: &str = "htg.ef_construction";
const P_NEXT_ID: &str = "htg.next_id";

/// Where a Milvus collection lives, parsed from `milvus://HOST:PORT/COLLECTION`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// gRPC port.
    pub port: u16,
    /// Collection name.
    pub collection: String,
    /// Whether to speak TLS (`milvus+tls://`).
    pub tls: bool,
}

impl Target {
    /// Parses a `milvus://HOST:PORT/COLLECTION` location, refusing anything Milvus would
    /// refuse later with a less helpful message.
    pub fn parse(location: &str) -> Result<Target, IndexError> {
        let bad = |reason: String| IndexError::Location {
            location: location.to_string(),
            reason,
        };
        let (tls, rest) = if let Some(r) = location.strip_prefix("milvus+tls://") {
            (true, r)
        } else if let Some(r) = location.strip_prefix("milvus://") {
            (false, r)
        } else {
            return Err(bad("expected milvus://HOST:PORT/COLLECTION".into()));
        };
        let (hostport, collection) = rest
            .split_once('/')
            .ok_or_else(|| bad("no collection: expected milvus://HOST:PORT/COLLECTION".into()))?;
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| bad("no port: expected milvus://HOST:PORT/COLLECTION".into()))?;
        if host.is_empty() {
            return Err(bad("empty host".into()));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad(format!("port {port:?} is not a number in 1..=65535")))?;
        if port == 0 {
            return Err(bad("port 0".into()));
        }
        let valid_name = !collection.is_empty()
            && collection.len() <= 255
            && collection
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && collection
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(bad(format!(
                "collection name {collection:?} must start with a letter or '_' and hold only \
                 letters, digits and '_' (at most 255)"
            )));
        }
        Ok(Target {
            host: host.to_string(),
            port,
            collection: collection.to_string(),
            tls,
        })
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn location(&self) -> String {
        format!(
            "{}{}/{}",
            if self.tls {
                "milvus+tls://"
            } else {
                "milvus://"
            },
            self.endpoint(),
            self.collection
        )
    }
}

/// Quotes `s` as a Milvus expression string literal, so a value holding quotes, backslashes or
/// line breaks can neither break nor widen the expression it is put in.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The smallest string above every string that starts with `prefix`, so `prefix <= s < upper`
/// is exactly "s starts with prefix" without LIKE and its wildcards. `None` when no such bound
/// exists (every character is `char::MAX`).
fn prefix_upper(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The Milvus filter expression for `opts`' label and path filters; `None` for no filter.
pub fn filter_expr(opts: &SearchOptions) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(l) = &opts.label {
        parts.push(format!("{F_LABEL} == {}", quote(l)));
    }
    if let Some(p) = &opts.path_prefix {
        if !p.is_empty() {
            parts.push(format!("{F_PATH} >= {}", quote(p)));
            if let Some(upper) = prefix_upper(p) {
                parts.push(format!("{F_PATH} < {}", quote(&upper)));
            }
        }
    }
    (!parts.is_empty()).then(|| parts.join(" && "))
}

fn ids_expr(ids: &[u64]) -> String {
    let list: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!("{F_ID} in [{}]", list.join(","))
}

/// Whether a failed call is worth repeating: the server or the network, not the request.
fn transient(e: &SdkError) -> bool {
    matches!(
        e,
        SdkError::Grpc(_) | SdkError::Timeout(_) | SdkError::RetryExhausted { .. }
    )
}

/// A collection of records and vectors in Milvus, behind the same seam as the local index.
pub struct MilvusIndex {
    rt: tokio::runtime::Runtime,
    client: ClientV2,
    target: Target,
    model: ModelId,
    model_path: Option<String>,
    params: HnswParams,
    dim: usize,
    count: AtomicUsize,
    /// Next id to hand out and the end of the reserved block; also serialises writes.
    ids: Mutex<(u64, u64)>,
}

impl MilvusIndex {
    /// Connects to the server `location` names and opens its collection, checking that htg
    /// made it (schema and properties).
    pub fn open(location: &str) -> Result<MilvusIndex, IndexError> {
        let target = Target::parse(location)?;
        let (rt, client) = connect(&target)?;
        let desc = block(&rt, async {
            let exists = has_collection(&client, &target.collection).await?;
            if !exists {
                return Ok(None);
            }
            let d = client
                .describe_collection(
                    DescribeCollectionRequest::builder()
                        .collection_name(&target.collection)
                        .build()?,
                )
                .await?;
            Ok::<_, SdkError>(Some(d.description().clone()))
        })
        .map_err(|e| sdk_err(&target, "describing the collection", e))?;
        let Some(desc) = desc else {
            return Err(IndexError::Location {
                location: target.location(),
                reason: format!(
                    "collection {:?} does not exist on {} (create it with `htg index <DIR> --index {}`)",
                    target.collection,
                    target.endpoint(),
                    target.location()
                ),
            });
        };
        let checked = check_schema(&target, &desc)?;
        let index = MilvusIndex {
            rt,
            client,
            model: checked.model,
            model_path: checked.model_path,
            params: checked.params,
            dim: checked.dim,
            count: AtomicUsize::new(0),
            ids: Mutex::new((checked.next_id, checked.next_id)),
            target,
        };
        index.load()?;
        let n = index.count_rows()?;
        index.count.store(n, Ordering::SeqCst);
        Ok(index)
    }

    /// Whether `location`'s server answers and holds the collection.
    pub fn exists(location: &str) -> bool {
        let Ok(target) = Target::parse(location) else {
            return false;
        };
        let Ok((rt, client)) = connect(&target) else {
            return false;
        };
        block(&rt, async {
            has_collection(&client, &target.collection).await
        })
        .unwrap_or(false)
    }

    /// Creates the collection with htg's schema, an HNSW index with `params`, and the model's
    /// provenance in its properties; refuses if it exists.
    pub fn create(
        location: &str,
        model: ModelId,
        model_path: Option<String>,
        params: HnswParams,
    ) -> Result<MilvusIndex, IndexError> {
        params.validate()?;
        let target = Target::parse(location)?;
        let (rt, client) = connect(&target)?;
        let dim = model.spec.embedding_dim;
        if dim == 0 || dim > 32_768 {
            return Err(IndexError::Param(format!(
                "embedding dimension {dim} is outside Milvus's 1..=32768"
            )));
        }
        let model_json = serde_json::to_string(&model)
            .map_err(|e| IndexError::Engine(format!("model provenance: {e}")))?;
        let mut props = HashMap::from([
            (P_FORMAT.to_string(), "1".to_string()),
            (P_MODEL.to_string(), model_json),
            (P_M.to_string(), params.m.to_string()),
            (P_EFC.to_string(), params.ef_construction.to_string()),
            (P_NEXT_ID.to_string(), "0".to_string()),
        ]);
        if let Some(p) = &model_path {
            props.insert(P_MODEL_PATH.to_string(), p.clone());
        }
        let schema = CollectionSchema::new()
            .add_field(
                FieldSchema::new()
                    .name(F_ID)
                    .data_type(DataType::Int64)
                    .primary_key(true)
                    .auto_id(false),
            )
            .add_field(
                FieldSchema::new()
                    .name(F_VECTOR)
                    .data_type(DataType::FloatVector)
                    .dimension(dim as u32),
            )
            .add_field(
                FieldSchema::new()
                    .name(F_PATH)
                    .data_type(DataType::VarChar)
                    .max_length(MAX_PATH as u32),
            )
            .add_field(
                FieldSchema::new()
                    .name(F_SHA)
                    .data_type(DataType::VarChar)
                    .max_length(64),
            )
            .add_field(
                FieldSchema::new()
                    .name(F_LABEL)
                    .data_type(DataType::VarChar)
                    .max_length(MAX_LABEL as u32),
            );
        let index_param = IndexParam::new()
            .field_name(F_VECTOR)
            .index_type(IndexType::Hnsw)
            .metric_type(MetricType::L2)
            .extra_params(HashMap::from([
                ("M".to_string(), params.m.to_string()),
                (
                    "efConstruction".to_string(),
                    params.ef_construction.to_string(),
                ),
            ]));
        let created = block(&rt, async {
            let exists = has_collection(&client, &target.collection).await?;
            if exists {
                return Ok(false);
            }
            client
                .create_collection(
                    CreateCollectionRequest::builder()
                        .collection_name(&target.collection)
                        .schema(schema)
                        .consistency_level(ConsistencyLevel::Strong)
                        .properties(props)
                        .build()?,
                )
                .await?;
            // `create_index(..).sync(true)` asks the server for a timestamp Milvus Lite lacks;
            // create without waiting, then poll.
            client
                .create_index(
                    CreateIndexRequest::builder()
                        .collection_name(&target.collection)
                        .index_param(index_param)
                        .sync(false)
                        .build()?,
                )
                .await?;
            Ok::<_, SdkError>(true)
        })
        .map_err(|e| sdk_err(&target, "creating the collection", e))?;
        if !created {
            return Err(IndexError::Location {
                location: target.location(),
                reason: format!(
                    "collection {:?} already exists on {}; open it instead, or drop it first",
                    target.collection,
                    target.endpoint()
                ),
            });
        }
        let index = MilvusIndex {
            rt,
            client,
            target,
            model,
            model_path,
            params,
            dim,
            count: AtomicUsize::new(0),
            ids: Mutex::new((0, 0)),
        };
        index.wait_index()?;
        index.load()?;
        Ok(index)
    }

    /// Deletes the collection `location` names (tests and `htg migrate --replace`).
    pub fn drop_collection(location: &str) -> Result<(), IndexError> {
        let target = Target::parse(location)?;
        let (rt, client) = connect(&target)?;
        block(&rt, async {
            client
                .drop_collection(
                    DropCollectionRequest::builder()
                        .collection_name(&target.collection)
                        .build()?,
                )
                .await
        })
        .map_err(|e| sdk_err(&target, "dropping the collection", e))
    }

    fn block<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, SdkError>> + Send,
    ) -> Result<T, IndexError>
    where
        T: Send,
    {
        block(&self.rt, fut).map_err(|e| sdk_err(&self.target, what, e))
    }

    fn wait_index(&self) -> Result<(), IndexError> {
        let c = &self.client;
        let name = &self.target.collection;
        for _ in 0..600 {
            let done = self.block("waiting for the HNSW index", async {
                let r = c
                    .describe_index(
                        DescribeIndexRequest::builder()
                            .collection_name(name)
                            .field_name(F_VECTOR)
                            .build()?,
                    )
                    .await?;
                Ok(format!("{r:?}"))
            })?;
            // The response's state enum is not public API across SDK versions: read its debug
            // form, which names the state.
            if done.contains("Finished") || !done.contains("InProgress") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(IndexError::Engine(format!(
            "{}: the HNSW index was not built within 60 s",
            self.target.location()
        )))
    }

    fn load(&self) -> Result<(), IndexError> {
        let c = &self.client;
        let name = &self.target.collection;
        self.block("loading the collection", async {
            c.load_collection(
                LoadCollectionRequest::builder()
                    .collection_name(name)
                    .build()?,
            )
            .await
        })
    }

    fn count_rows(&self) -> Result<usize, IndexError> {
        let c = &self.client;
        let name = &self.target.collection;
        let n = self.block("counting rows", async {
            let r = c
                .query(
                    QueryRequest::builder()
                        .collection_name(name)
                        .output_fields(["count(*)"])
                        .consistency_level(ConsistencyLevel::Strong)
                        .build()?,
                )
                .await?;
            let row =
                r.results().rows()?.next().ok_or_else(|| {
                    SdkError::MalformedResponse("count(*) returned no row".into())
                })?;
            row.get_i64("count(*)")
        })?;
        Ok(n.max(0) as usize)
    }

    /// Reserves `n` ids, extending the block recorded in the collection's properties first,
    /// so an id is never handed out twice even after a crash.
    fn reserve(&self, guard: &mut (u64, u64), n: usize) -> Result<Vec<u64>, IndexError> {
        let n = n as u64;
        if guard.0 + n > guard.1 {
            let end = guard.0 + n.max(ID_BLOCK);
            let c = &self.client;
            let name = &self.target.collection;
            self.block("reserving ids", async {
                c.alter_collection_properties(
                    AlterCollectionPropertiesRequest::builder()
                        .collection_name(name)
                        .property(P_NEXT_ID, end.to_string())
                        .build()?,
                )
                .await
            })?;
            guard.1 = end;
        }
        let ids = (guard.0..guard.0 + n).collect();
        guard.0 += n;
        Ok(ids)
    }

    fn upsert_batch(&self, ids: &[u64], items: &[(Record, Vec<f32>)]) -> Result<(), IndexError> {
        let c = &self.client;
        let name = &self.target.collection;
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            let columns = vec![
                FieldData::int64(F_ID, ids.iter().map(|&i| i as i64).collect()),
                FieldData::float_vector(F_VECTOR, items.iter().map(|(_, v)| v.clone()).collect()),
                FieldData::varchar(F_PATH, items.iter().map(|(r, _)| r.path.clone()).collect()),
                FieldData::varchar(F_SHA, items.iter().map(|(r, _)| r.sha256.clone()).collect()),
                FieldData::varchar(
                    F_LABEL,
                    items
                        .iter()
                        .map(|(r, _)| r.label.clone().unwrap_or_default())
                        .collect(),
                ),
            ];
            let result = block(&self.rt, async {
                c.upsert(
                    UpsertRequest::builder()
                        .insert(
                            InsertRequest::builder()
                                .collection_name(name)
                                .columns(columns)
                                .build()?,
                        )
                        .build()?,
                )
                .await
                .map(|_| ())
            });
            match result {
                Ok(()) => return Ok(()),
                Err(e) if transient(&e) && attempt < WRITE_ATTEMPTS => {
                    std::thread::sleep(delay);
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(sdk_err(&self.target, "writing rows", e)),
            }
        }
    }

    /// Rows matching `expr`, with the given output fields, as `(id, record, vector)`.
    fn query_rows(
        &self,
        expr: String,
        with_vectors: bool,
        limit: Option<i64>,
    ) -> Result<Vec<Row>, IndexError> {
        let c = &self.client;
        let name = &self.target.collection;
        let mut fields = vec![F_ID, F_PATH, F_SHA, F_LABEL];
        if with_vectors {
            fields.push(F_VECTOR);
        }
        self.block("querying rows", async {
            let mut b = QueryRequest::builder()
                .collection_name(name)
                .filter(expr)
                .output_fields(fields)
                .consistency_level(ConsistencyLevel::Strong);
            if let Some(l) = limit {
                b = b.limit(l);
            }
            let r = c.query(b.build()?).await?;
            let mut out = Vec::new();
            for row in r.results().rows()? {
                let id = row.get_i64(F_ID)? as u64;
                let label = row.get_str(F_LABEL)?;
                let record = Record {
                    path: row.get_str(F_PATH)?.to_string(),
                    sha256: row.get_str(F_SHA)?.to_string(),
                    label: (!label.is_empty()).then(|| label.to_string()),
                };
                let v = if with_vectors {
                    Some(row.get_float_vector(F_VECTOR)?.to_vec())
                } else {
                    None
                };
                out.push((id, record, v));
            }
            Ok(out)
        })
    }

    fn next_id(&self) -> u64 {
        let g = self.ids.lock();
        g.1.max(g.0)
    }
}

/// One row read back: id, record, and the vector when asked for.
type Row = (u64, Record, Option<Vec<f32>>);

/// What a valid htg collection's description yields.
struct Checked {
    model: ModelId,
    model_path: Option<String>,
    params: HnswParams,
    dim: usize,
    next_id: u64,
}

fn check_schema(target: &Target, desc: &CollectionDesc) -> Result<Checked, IndexError> {
    let bad = |reason: String| IndexError::Location {
        location: target.location(),
        reason: format!(
            "collection {:?} was not made by htg: {reason}",
            target.collection
        ),
    };
    let fields = desc.get_schema().get_fields();
    let field = |name: &str, ty: DataType| {
        fields
            .iter()
            .find(|f| f.get_name() == name)
            .ok_or_else(|| bad(format!("no field {name:?}")))
            .and_then(|f| {
                if f.get_data_type() == ty {
                    Ok(f)
                } else {
                    Err(bad(format!(
                        "field {name:?} is {:?}, expected {ty:?}",
                        f.get_data_type()
                    )))
                }
            })
    };
    let id = field(F_ID, DataType::Int64)?;
    if !id.is_primary_key() || id.is_auto_id() {
        return Err(bad(format!(
            "{F_ID:?} must be the primary key, not auto-generated"
        )));
    }
    let vector = field(F_VECTOR, DataType::FloatVector)?;
    for name in [F_PATH, F_SHA, F_LABEL] {
        field(name, DataType::VarChar)?;
    }
    let props = desc.get_properties();
    let prop = |k: &str| {
        props
            .get(k)
            .ok_or_else(|| bad(format!("no property {k:?}")))
    };
    if prop(P_FORMAT)? != "1" {
        return Err(bad(format!("unknown {P_FORMAT} {:?}", props[P_FORMAT])));
    }
    let model: ModelId = serde_json::from_str(prop(P_MODEL)?)
        .map_err(|e| bad(format!("property {P_MODEL:?} is not a model id: {e}")))?;
    let num = |k: &str| -> Result<u64, IndexError> {
        prop(k)?
            .parse()
            .map_err(|_| bad(format!("property {k:?} is not a number")))
    };
    let params = HnswParams {
        m: num(P_M)? as usize,
        ef_construction: num(P_EFC)? as usize,
    };
    let dim = vector.get_dimension() as usize;
    if dim != model.spec.embedding_dim {
        return Err(bad(format!(
            "vector dimension {dim} differs from the model's {}",
            model.spec.embedding_dim
        )));
    }
    Ok(Checked {
        model,
        model_path: props.get(P_MODEL_PATH).cloned(),
        params,
        dim,
        next_id: num(P_NEXT_ID)?,
    })
}

/// Whether the server holds a collection of that name.
async fn has_collection(client: &ClientV2, name: &str) -> Result<bool, SdkError> {
    Ok(client
        .has_collection(
            HasCollectionRequest::builder()
                .collection_name(name)
                .build()?,
        )
        .await?
        .exists())
}

fn connect(target: &Target) -> Result<(tokio::runtime::Runtime, ClientV2), IndexError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("htg-milvus")
        .enable_all()
        .build()
        .map_err(|e| IndexError::Engine(format!("starting the Milvus client runtime: {e}")))?;
    let scheme = if target.tls { "https" } else { "http" };
    let mut config = ConnectConfig::new()
        .uri(format!("{scheme}://{}", target.endpoint()))
        .connect_timeout(Duration::from_secs(5))
        .rpc_timeout(Duration::from_secs(60))
        .retry(
            RetryConfig::new()
                .max_attempts(5)
                .max_retry_timeout(Duration::from_secs(20))
                .initial_backoff(Duration::from_millis(100))
                .max_backoff(Duration::from_secs(3)),
        );
    if target.tls {
        config = config.secure(true);
        if let Ok(ca) = std::env::var("HTG_MILVUS_CA") {
            config = config.ca_certificate(ca);
        }
    }
    if let Ok(token) = std::env::var("HTG_MILVUS_TOKEN") {
        config = config.token(token);
    } else if let (Ok(u), Ok(p)) = (
        std::env::var("HTG_MILVUS_USER"),
        std::env::var("HTG_MILVUS_PASSWORD"),
    ) {
        config = config.username(u).password(p);
    }
    let client = block(&rt, ClientV2::new(&config)).map_err(|e| IndexError::Unavailable {
        location: target.location(),
        reason: format!(
            "cannot reach Milvus at {}: {}",
            target.endpoint(),
            one_line(&e)
        ),
    })?;
    Ok((rt, client))
}

/// Runs `fut` to completion on `rt` from synchronous code. When the caller is itself inside a
/// tokio runtime (an actix worker), `block_on` would panic there, so the future runs on a
/// scoped thread instead.
fn block<F>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        rt.block_on(fut)
    } else {
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(fut))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

fn one_line(e: &SdkError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s.replace('\n', " ")
}

fn sdk_err(target: &Target, what: &str, e: SdkError) -> IndexError {
    if transient(&e) {
        IndexError::Unavailable {
            location: target.location(),
            reason: format!("{what}: {}", one_line(&e)),
        }
    } else {
        IndexError::Engine(format!("{} {what}: {}", target.location(), one_line(&e)))
    }
}

impl SearchIndex for MilvusIndex {
    fn location(&self) -> String {
        self.target.location()
    }

    fn model(&self) -> ModelId {
        self.model.clone()
    }

    fn model_path(&self) -> Option<String> {
        self.model_path.clone()
    }

    fn params(&self) -> HnswParams {
        self.params
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn record(&self, id: u64) -> Option<Record> {
        let rows = self
            .query_rows(format!("{F_ID} == {id}"), false, None)
            .ok()?;
        rows.into_iter().next().map(|(_, r, _)| r)
    }

    fn vector(&self, id: u64) -> Option<Vec<f32>> {
        let rows = self
            .query_rows(format!("{F_ID} == {id}"), true, None)
            .ok()?;
        rows.into_iter().next().and_then(|(_, _, v)| v)
    }

    fn vectors(&self, ids: &[u64]) -> Vec<Option<Vec<f32>>> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(INSERT_BATCH) {
            let Ok(rows) = self.query_rows(ids_expr(chunk), true, None) else {
                return ids.iter().map(|_| None).collect();
            };
            found.extend(rows.into_iter().filter_map(|(id, _, v)| Some((id, v?))));
        }
        ids.iter().map(|id| found.get(id).cloned()).collect()
    }

    fn records(&self) -> Vec<(u64, Record)> {
        let end = self.next_id();
        let mut out = Vec::new();
        let mut start = 0u64;
        while start < end {
            let stop = start + QUERY_PAGE as u64;
            let expr = format!("{F_ID} >= {start} && {F_ID} < {stop}");
            match self.query_rows(expr, false, Some(QUERY_PAGE)) {
                Ok(rows) => out.extend(rows.into_iter().map(|(id, r, _)| (id, r))),
                Err(_) => break,
            }
            start = stop;
        }
        out.sort_by_key(|(id, _)| *id);
        out
    }

    fn insert_many(&self, items: Vec<(Record, Vec<f32>)>) -> Result<Vec<u64>, IndexError> {
        for (r, v) in &items {
            if v.len() != self.dim {
                return Err(IndexError::Dimension {
                    got: v.len(),
                    expected: self.dim,
                });
            }
            if r.path.len() > MAX_PATH {
                return Err(IndexError::Param(format!(
                    "path is {} bytes; a Milvus row holds at most {MAX_PATH}",
                    r.path.len()
                )));
            }
            if r.label.as_ref().is_some_and(|l| l.len() > MAX_LABEL) {
                return Err(IndexError::Param(format!(
                    "label is longer than {MAX_LABEL} bytes"
                )));
            }
            if r.sha256.len() > 64 {
                return Err(IndexError::Param(
                    "sha256 is longer than 64 characters".into(),
                ));
            }
        }
        let mut guard = self.ids.lock();
        let ids = self.reserve(&mut guard, items.len())?;
        for (chunk_ids, chunk) in ids.chunks(INSERT_BATCH).zip(items.chunks(INSERT_BATCH)) {
            self.upsert_batch(chunk_ids, chunk)?;
            self.count.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        Ok(ids)
    }

    fn remove_many(&self, ids: &[u64]) -> Result<Vec<bool>, IndexError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let _guard = self.ids.lock();
        let mut present = std::collections::HashSet::new();
        for chunk in ids.chunks(INSERT_BATCH) {
            for (id, _, _) in self.query_rows(ids_expr(chunk), false, None)? {
                present.insert(id);
            }
        }
        let existing: Vec<u64> = present.iter().copied().collect();
        let c = &self.client;
        let name = &self.target.collection;
        for chunk in existing.chunks(INSERT_BATCH) {
            // `delete(..).ids(..)` sends a template Milvus Lite cannot parse; a plain
            // expression works everywhere.
            let expr = ids_expr(chunk);
            self.block("deleting rows", async {
                c.delete(
                    DeleteRequest::builder()
                        .collection_name(name)
                        .filter(expr)
                        .build()?,
                )
                .await
                .map(|_| ())
            })?;
            self.count.fetch_sub(chunk.len(), Ordering::SeqCst);
        }
        let mut seen = std::collections::HashSet::new();
        Ok(ids
            .iter()
            .map(|id| present.contains(id) && seen.insert(*id))
            .collect())
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        opts: &SearchOptions,
    ) -> Result<Vec<Hit>, IndexError> {
        if query.len() != self.dim {
            return Err(IndexError::Dimension {
                got: query.len(),
                expected: self.dim,
            });
        }
        if opts.exact {
            return Err(IndexError::Param(format!(
                "exact search is not available on {}: Milvus searches its HNSW index (raise ef instead)",
                self.location()
            )));
        }
        if k == 0 || opts.label.as_deref() == Some("") {
            return Ok(Vec::new());
        }
        let ef = opts.resolve(k, usize::MAX)?.ef;
        // Milvus refuses larger lists; a `k` above it raises `ef` past it too.
        if ef > MAX_EF {
            return Err(IndexError::Param(format!("ef {ef} is above {MAX_EF}")));
        }
        let c = &self.client;
        let name = &self.target.collection;
        let filter = filter_expr(opts);
        let q = query.to_vec();
        let mut hits = self.block("searching", async {
            let mut b = SearchRequest::builder()
                .collection_name(name)
                .vector_field(F_VECTOR)
                .vectors(SearchVectors::Float(vec![q]))
                .limit(k as i64)
                .metric_type(MetricType::L2)
                .output_fields([F_PATH, F_SHA, F_LABEL])
                .extra_params(HashMap::from([("ef".to_string(), ef.to_string())]))
                .consistency_level(ConsistencyLevel::Strong);
            if let Some(f) = filter {
                b = b.filter(f);
            }
            let r = c.search(b.build()?).await?;
            let mut out = Vec::new();
            for result in r.results() {
                for row in result.rows()? {
                    let distance = match row.get("score")? {
                        ResultValue::Float(s) => s,
                        ResultValue::Double(s) => s as f32,
                        other => {
                            return Err(SdkError::MalformedResponse(format!(
                                "search score is {other:?}"
                            )))
                        }
                    };
                    let label = row.get_str(F_LABEL)?;
                    out.push(Hit {
                        id: row.get_i64(F_ID)? as u64,
                        distance,
                        record: Record {
                            path: row.get_str(F_PATH)?.to_string(),
                            sha256: row.get_str(F_SHA)?.to_string(),
                            label: (!label.is_empty()).then(|| label.to_string()),
                        },
                    });
                }
            }
            Ok(out)
        })?;
        // The expression already filters; this keeps the contract even on a server whose
        // expression language differs.
        hits.retain(|h| opts.accepts(&h.record));
        hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
        Ok(opts.within(hits, |h| h.distance))
    }

    fn flush(&self) -> Result<(), IndexError> {
        let c = &self.client;
        let name = &self.target.collection;
        self.block("flushing", async {
            c.flush(FlushRequest::builder().collection_names([name]).build()?)
                .await
                .map(|_| ())
        })
    }

    fn stats(&self) -> IndexStats {
        IndexStats {
            engine: "milvus".into(),
            count: self.len(),
            ..IndexStats::default()
        }
    }

    fn snapshot(&self, out: &Path) -> Result<(u64, u64), IndexError> {
        let _ = out;
        Err(IndexError::NotSupported {
            location: self.location(),
            operation: "snapshots",
            reason:
                "a Milvus collection is backed up by Milvus itself (its backup tool), not by htg"
                    .into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        let t = Target::parse("milvus://127.0.0.1:19530/imgs").unwrap();
        assert_eq!(
            t,
            Target {
                host: "127.0.0.1".into(),
                port: 19530,
                collection: "imgs".into(),
                tls: false
            }
        );
        assert!(
            Target::parse("milvus+tls://db.example:443/a_1")
                .unwrap()
                .tls
        );
        for bad in [
            "milvus://host/imgs",
            "milvus://host:x/imgs",
            "milvus://:1/imgs",
            "milvus://h:1/",
            "milvus://h:1/1abc",
            "milvus://h:1/a-b",
            "milvus://h:0/a",
            "http://h:1/a",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn quoting_cannot_break_out() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("x\ny"), r#""x\ny""#);
        let hostile = r#"x" || label != ""#;
        let q = quote(hostile);
        // Every quote inside is escaped, so the literal ends only at the last character.
        let inner = &q[1..q.len() - 1];
        let mut escaped = false;
        for c in inner.chars() {
            assert!(escaped || c != '"', "unescaped quote in {q}");
            escaped = !escaped && c == '\\';
        }
    }

    #[test]
    fn prefix_bounds_are_exact() {
        assert_eq!(prefix_upper("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_upper("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_upper("\u{10FFFF}"), None);
        let opts = SearchOptions {
            path_prefix: Some("img/a%_".into()),
            label: Some("q\"".into()),
            ..Default::default()
        };
        assert_eq!(
            filter_expr(&opts).unwrap(),
            r#"label == "q\"" && path >= "img/a%_" && path < "img/a%`""#
        );
    }
}
