//! S3 backend: an [`ObjectStore`] over `aws-sdk-s3`.
//!
//! Vocabulary:
//! - **bucket**: the S3 bucket that holds the store; it must exist beforehand.
//! - **store prefix**: the key prefix (without leading or trailing `/`) under which
//!   every object of this store lives; empty means the bucket root.
//! - **relative key**: a key as callers of [`ObjectStore`] see it (`seg/00001`);
//!   the **full key** sent to S3 is `store-prefix/relative-key`.
//! - **operation**: one S3 request (`PUT`, `GET`, `GET range`, `LIST`, `DELETE`);
//!   error messages name the operation and the `s3://bucket/full-key` it targeted.
//!
//! Requests are sent exactly once: the SDK's own retries are disabled because kvfs
//! wraps every store in its own retry layer, which relies on the error classification
//! done here (the `classify` function): throttling and transient failures are retryable,
//! missing buckets and bad credentials are permanent.
//!
//! Conditional writes map to S3 headers: [`PutMode::CreateNew`] sends
//! `If-None-Match: *`, [`PutMode::IfMatch`] sends `If-Match: <etag>`. A `412
//! PreconditionFailed` and a `409 ConditionalRequestConflict` (two conditional writes
//! racing on one key) both become [`StoreError::PreconditionFailed`].

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::meta::region::RegionProviderChain;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{ProvideCredentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::memory::slice_range;
use super::{check_key, GetResult, ObjectMeta, ObjectStore, PutMode, StoreError, StoreResult};

/// Region used when neither the environment nor a profile names one.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Time allowed to establish a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one request attempt, including reading the whole response body.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Page size of `ListObjectsV2` requests (the S3 maximum).
const LIST_PAGE_SIZE: i32 = 1000;

/// An [`ObjectStore`] backed by an S3 bucket and key prefix.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Normalized store prefix: no leading or trailing `/`, may be empty.
    prefix: String,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Connect to `bucket` using the standard AWS configuration (credential chain,
    /// `AWS_REGION`, `AWS_ENDPOINT_URL`, profiles).
    ///
    /// The region defaults to [`DEFAULT_REGION`]; when a custom endpoint is configured
    /// (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3` or a profile's `endpoint_url`) requests
    /// use path-style addressing, which S3-compatible servers expect. Credentials are
    /// resolved once here so that a missing configuration fails at once with a clear
    /// message instead of on the first write. The bucket itself is not checked.
    pub async fn connect(bucket: &str, prefix: &str) -> StoreResult<S3Store> {
        check_bucket_name(bucket)?;
        let region = RegionProviderChain::default_provider().or_else(Region::new(DEFAULT_REGION));
        let sdk_config = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .retry_config(RetryConfig::disabled())
            .timeout_config(default_timeouts())
            .load()
            .await;

        let Some(credentials) = sdk_config.credentials_provider() else {
            return Err(StoreError::Permanent(format!(
                "connect to s3://{bucket}: no AWS credentials provider is configured"
            )));
        };
        if let Err(err) = credentials.provide_credentials().await {
            return Err(credentials_error(bucket, &err));
        }

        let custom_endpoint = sdk_config.endpoint_url().is_some()
            || env_is_set("AWS_ENDPOINT_URL")
            || env_is_set("AWS_ENDPOINT_URL_S3");
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk_config);
        if custom_endpoint {
            builder = builder.force_path_style(true);
        }
        if !env_is_set("AWS_REQUEST_CHECKSUM_CALCULATION") {
            // Integrity is checked by kvfs itself (CRC32C per record); extra checksum
            // headers and aws-chunked bodies break some S3-compatible servers.
            builder =
                builder.request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        }
        let client = Client::from_conf(builder.build());
        log::debug!(
            "S3 store s3://{bucket}/{prefix} (region {:?}, endpoint {:?}, path style {custom_endpoint})",
            sdk_config.region(),
            sdk_config.endpoint_url()
        );
        Ok(S3Store::from_client(client, bucket, prefix))
    }

    /// Wrap an already configured client (tests, custom endpoints). The prefix is
    /// normalized: leading and trailing `/` are removed.
    pub fn from_client(client: Client, bucket: &str, prefix: &str) -> S3Store {
        S3Store {
            client,
            bucket: bucket.to_string(),
            prefix: normalize_prefix(prefix),
        }
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The normalized store prefix (may be empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full S3 key of a relative key.
    fn full_key(&self, key: &str) -> String {
        join_key(&self.prefix, key)
    }

    /// `s3://bucket/full-key`, for messages.
    fn location(&self, full_key: &str) -> String {
        format!("s3://{}/{}", self.bucket, full_key)
    }

    /// Turn an SDK error into a [`StoreError`] naming the operation and object.
    fn map_err<E>(&self, op: &str, full_key: &str, err: &SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let facts = ErrorFacts::from_sdk(err);
        let err = classify(op, &self.location(full_key), &self.bucket, &facts);
        log::debug!("S3 {op} {}: {err}", self.location(full_key));
        err
    }
}

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> StoreResult<String> {
        check_key(key)?;
        let full = self.full_key(key);
        let len = i64::try_from(data.len()).map_err(|_| {
            StoreError::Config(format!("object {} is too large", self.location(&full)))
        })?;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_length(len)
            .body(ByteStream::from(data));
        req = match &mode {
            PutMode::Overwrite => req,
            PutMode::CreateNew => req.if_none_match("*"),
            PutMode::IfMatch(etag) => req.if_match(etag),
        };
        // Objects carry their own CRC32C checksums, so the SigV4 payload hash (a
        // SHA-256 over every byte) buys nothing and costs CPU: send UNSIGNED-PAYLOAD.
        let out = req
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| {
                match (self.map_err("PUT", &full, &e), &mode) {
                    // AWS answers `If-Match` on a missing object with 404 NoSuchKey; to kvfs
                    // that is the same outcome as a changed object.
                    (StoreError::NotFound(loc), PutMode::IfMatch(_)) => {
                        StoreError::PreconditionFailed(loc)
                    }
                    (err, _) => err,
                }
            })?;
        match out.e_tag() {
            Some(etag) if !etag.is_empty() => Ok(etag.to_string()),
            _ => Err(StoreError::Transient(format!(
                "PUT {}: response carried no ETag",
                self.location(&full)
            ))),
        }
    }

    async fn get(&self, key: &str) -> StoreResult<GetResult> {
        check_key(key)?;
        let full = self.full_key(key);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.map_err("GET", &full, &e))?;
        let etag = out.e_tag().unwrap_or_default().to_string();
        let expected = out.content_length();
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| {
                StoreError::Transient(format!(
                    "GET {}: reading the response body failed: {}",
                    self.location(&full),
                    error_chain(&e)
                ))
            })?
            .into_bytes();
        if let Some(expected) = expected {
            if u64::try_from(expected).ok() != Some(data.len() as u64) {
                return Err(StoreError::Transient(format!(
                    "GET {}: got {} bytes, Content-Length said {expected}",
                    self.location(&full),
                    data.len()
                )));
            }
        }
        Ok(GetResult { data, etag })
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        check_key(key)?;
        if range.start > range.end {
            return Err(StoreError::InvalidRange {
                key: key.to_string(),
                range,
            });
        }
        if range.start == range.end {
            return Ok(Bytes::new());
        }
        let full = self.full_key(key);
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .range(header)
            .send()
            .await
        {
            Ok(out) => out,
            Err(err) => {
                let facts = ErrorFacts::from_sdk(&err);
                if facts.status == Some(416) || facts.code.as_deref() == Some("InvalidRange") {
                    return Err(StoreError::InvalidRange {
                        key: key.to_string(),
                        range,
                    });
                }
                return Err(self.map_err("GET range", &full, &err));
            }
        };
        let content_range = out.content_range().map(str::to_string);
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| {
                StoreError::Transient(format!(
                    "GET range {} {range:?}: reading the response body failed: {}",
                    self.location(&full),
                    error_chain(&e)
                ))
            })?
            .into_bytes();
        let want = range.end - range.start;
        if data.len() as u64 == want {
            return Ok(data);
        }
        match content_range.as_deref().and_then(parse_content_range_total) {
            // The object is shorter than the requested end: S3 answers with the part
            // that exists; report it as the caller's error, as other backends do.
            Some(total) if total < range.end => Err(StoreError::InvalidRange {
                key: key.to_string(),
                range,
            }),
            // A server that ignores `Range` sends the whole object (200, no
            // Content-Range): cut the range out ourselves.
            None if content_range.is_none() && data.len() as u64 > want => {
                slice_range(key, &data, range)
            }
            _ => Err(StoreError::Transient(format!(
                "GET range {} {range:?}: got {} bytes, expected {want} (Content-Range {content_range:?})",
                self.location(&full),
                data.len()
            ))),
        }
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        let full_prefix = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut result = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .max_keys(LIST_PAGE_SIZE)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.map_err("LIST", &full_prefix, &e))?;
            for obj in out.contents() {
                let Some(full) = obj.key() else { continue };
                let Some(rel) = full.get(strip..).filter(|_| full.starts_with(&full_prefix)) else {
                    continue;
                };
                // Directory markers (`a/b/`) and the prefix itself are not objects of
                // this store.
                if rel.is_empty() || rel.ends_with('/') {
                    continue;
                }
                let size = obj.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
                result.push(ObjectMeta {
                    key: rel.to_string(),
                    size,
                    stored_size: size,
                });
            }
            match (out.is_truncated(), out.next_continuation_token()) {
                (Some(true), Some(next)) if !next.is_empty() => token = Some(next.to_string()),
                (Some(true), _) => {
                    return Err(StoreError::Transient(format!(
                        "LIST {}: truncated listing without a continuation token",
                        self.location(&full_prefix)
                    )))
                }
                _ => break,
            }
        }
        result.sort_by(|a, b| a.key.cmp(&b.key));
        result.dedup_by(|a, b| a.key == b.key);
        Ok(result)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        check_key(key)?;
        let full = self.full_key(key);
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => match self.map_err("DELETE", &full, &err) {
                StoreError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// The timeouts every S3 client of kvfs uses.
pub fn default_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .build()
}

fn env_is_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

fn check_bucket_name(bucket: &str) -> StoreResult<()> {
    if bucket.is_empty() || bucket.contains('/') {
        return Err(StoreError::Config(format!(
            "invalid S3 bucket name {bucket:?}"
        )));
    }
    Ok(())
}

/// Remove leading and trailing slashes and collapse repeated ones.
fn normalize_prefix(prefix: &str) -> String {
    prefix
        .split('/')
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}/{key}")
    }
}

/// The total size from a `Content-Range: bytes a-b/total` header.
fn parse_content_range_total(value: &str) -> Option<u64> {
    let (_, total) = value.rsplit_once('/')?;
    total.trim().parse().ok()
}

/// Error for a credential chain that produced no credentials at connect time.
fn credentials_error(bucket: &str, err: &(dyn std::error::Error + 'static)) -> StoreError {
    let detail = error_chain(err);
    // `CredentialsError` variants are only visible through `Debug`; a provider that
    // timed out (for example the instance metadata service) may succeed later.
    if format!("{err:?}").starts_with("ProviderTimedOut") {
        return StoreError::Transient(format!(
            "connect to s3://{bucket}: the AWS credential provider timed out: {detail}"
        ));
    }
    StoreError::Permanent(format!(
        "connect to s3://{bucket}: no usable AWS credentials ({detail}); set \
         AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or configure another \
         source of the standard credential chain"
    ))
}

/// How a request failed, before classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The service answered with an error status.
    Service,
    /// The attempt or connection timed out.
    Timeout,
    /// Connecting, sending or receiving failed at the I/O level.
    Io,
    /// The request could not be dispatched for another reason (including
    /// credentials that could not be resolved).
    Dispatch,
    /// The request was malformed locally and never sent.
    User,
    /// A response arrived but could not be parsed (truncated, garbled).
    Response,
    /// The request could not be built.
    Construction,
}

/// What is known about a failed request: the input of [`classify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ErrorFacts {
    pub status: Option<u16>,
    pub code: Option<String>,
    pub kind: FailureKind,
    /// Human-readable detail (the error chain, or the service's message).
    pub detail: String,
}

impl ErrorFacts {
    fn from_sdk<E>(err: &SdkError<E, HttpResponse>) -> ErrorFacts
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().map(str::to_string);
        let kind = match err {
            SdkError::ServiceError(_) => FailureKind::Service,
            SdkError::TimeoutError(_) => FailureKind::Timeout,
            SdkError::ResponseError(_) => FailureKind::Response,
            SdkError::ConstructionFailure(_) => FailureKind::Construction,
            SdkError::DispatchFailure(d) => {
                if d.is_timeout() {
                    FailureKind::Timeout
                } else if d.is_io() {
                    FailureKind::Io
                } else if d.is_user() {
                    FailureKind::User
                } else {
                    FailureKind::Dispatch
                }
            }
            _ => FailureKind::Dispatch,
        };
        // A service error's `Display` chain repeats the whole raw response; its
        // message (often absent) is what the server meant to say.
        let detail = match kind {
            FailureKind::Service => err.message().unwrap_or_default().to_string(),
            _ => error_chain(err),
        };
        ErrorFacts {
            status,
            code,
            kind,
            detail,
        }
    }
}

/// An error and its sources, `outer: inner: innermost`, skipping repeats.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Whether an error text is about missing or unusable credentials.
fn mentions_credentials(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    text.contains("credential") || text.contains("identity")
}

/// Map a failed S3 request to a [`StoreError`].
///
/// `op` names the operation (`PUT`), `location` the object (`s3://bucket/key`).
/// Pure: depends only on its arguments, so the mapping is unit-tested directly.
pub(crate) fn classify(op: &str, location: &str, bucket: &str, facts: &ErrorFacts) -> StoreError {
    let detail = &facts.detail;
    let code = facts.code.as_deref().unwrap_or("");
    let what = format!("{op} {location}");
    let credentials_hint = "check the AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
                            AWS_PROFILE) and that they may access the bucket";
    match facts.kind {
        FailureKind::Timeout => {
            return StoreError::Transient(format!("{what}: request timed out: {detail}"))
        }
        FailureKind::Io => {
            return StoreError::Transient(format!("{what}: connection failed: {detail}"))
        }
        FailureKind::Response => {
            return StoreError::Transient(format!("{what}: unreadable response: {detail}"))
        }
        FailureKind::Dispatch | FailureKind::Construction | FailureKind::User
            if mentions_credentials(detail) =>
        {
            return StoreError::Permanent(format!(
                "{what}: no usable AWS credentials: {detail}; {credentials_hint}"
            ))
        }
        FailureKind::Dispatch => {
            return StoreError::Transient(format!("{what}: request not sent: {detail}"))
        }
        FailureKind::Construction | FailureKind::User => {
            return StoreError::Permanent(format!("{what}: invalid request: {detail}"))
        }
        FailureKind::Service => {}
    }

    let status = facts.status.unwrap_or(0);
    let mut described = format!("{what}: HTTP {status}");
    if !code.is_empty() {
        described.push(' ');
        described.push_str(code);
    }
    if !detail.is_empty() {
        described.push_str(": ");
        described.push_str(detail);
    }
    match code {
        "NoSuchKey" => return StoreError::NotFound(location.to_string()),
        "NoSuchBucket" => {
            return StoreError::Permanent(format!("{what}: bucket {bucket} does not exist"))
        }
        "PreconditionFailed" | "ConditionalRequestConflict" => {
            return StoreError::PreconditionFailed(location.to_string())
        }
        "SlowDown"
        | "Throttling"
        | "ThrottlingException"
        | "ThrottledException"
        | "RequestThrottled"
        | "RequestLimitExceeded"
        | "TooManyRequests"
        | "TooManyRequestsException" => return StoreError::Throttled(described),
        "AccessDenied"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "NotSignedUp"
        | "ExpiredToken"
        | "InvalidToken"
        | "TokenRefreshRequired"
        | "InvalidSecurity"
        | "AccountProblem"
        | "AllAccessDisabled" => {
            return StoreError::Permanent(format!("{described}; {credentials_hint}"))
        }
        "PermanentRedirect"
        | "AuthorizationHeaderMalformed"
        | "IllegalLocationConstraintException" => {
            return StoreError::Permanent(format!(
                "{described}; the bucket may be in another region (set AWS_REGION)"
            ))
        }
        // Out of storage (MinIO), or over a bucket or user quota (MinIO, Ceph RGW).
        "XMinioStorageFull"
        | "XMinioAdminBucketQuotaExceeded"
        | "QuotaExceeded"
        | "InsufficientStorage" => return StoreError::NoSpace(described),
        // S3 closed an idle upload, or a conflicting operation was in progress.
        "RequestTimeout" | "OperationAborted" | "InternalError" => {
            return StoreError::Transient(described)
        }
        _ => {}
    }
    match status {
        404 => StoreError::NotFound(location.to_string()),
        412 => StoreError::PreconditionFailed(location.to_string()),
        429 => StoreError::Throttled(described),
        // HEAD-style answers carry no error code; S3's bare 503 is nearly always SlowDown.
        503 if code.is_empty() => StoreError::Throttled(described),
        401 | 403 => StoreError::Permanent(format!("{described}; {credentials_hint}")),
        301 | 307 => StoreError::Permanent(format!(
            "{described}; the bucket may be in another region (set AWS_REGION)"
        )),
        408 => StoreError::Transient(described),
        507 => StoreError::NoSpace(described),
        500..=599 => StoreError::Transient(described),
        400..=499 => StoreError::Permanent(described),
        _ => StoreError::Transient(described),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: u16, code: &str) -> ErrorFacts {
        ErrorFacts {
            status: Some(status),
            code: (!code.is_empty()).then(|| code.to_string()),
            kind: FailureKind::Service,
            detail: "server said no".to_string(),
        }
    }

    fn other(kind: FailureKind, detail: &str) -> ErrorFacts {
        ErrorFacts {
            status: None,
            code: None,
            kind,
            detail: detail.to_string(),
        }
    }

    fn run(facts: &ErrorFacts) -> StoreError {
        classify("PUT", "s3://bkt/pre/key", "bkt", facts)
    }

    #[test]
    fn not_found() {
        assert!(
            matches!(run(&service(404, "NoSuchKey")), StoreError::NotFound(k) if k == "s3://bkt/pre/key")
        );
        assert!(matches!(run(&service(404, "")), StoreError::NotFound(_)));
    }

    #[test]
    fn missing_bucket_is_permanent_and_named() {
        let err = run(&service(404, "NoSuchBucket"));
        match &err {
            StoreError::Permanent(msg) => {
                assert!(msg.contains("bucket bkt does not exist"), "{msg}");
                assert!(msg.contains("PUT"), "{msg}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!err.is_retryable());
    }

    #[test]
    fn preconditions() {
        assert!(matches!(
            run(&service(412, "PreconditionFailed")),
            StoreError::PreconditionFailed(_)
        ));
        assert!(matches!(
            run(&service(412, "")),
            StoreError::PreconditionFailed(_)
        ));
        assert!(matches!(
            run(&service(409, "ConditionalRequestConflict")),
            StoreError::PreconditionFailed(_)
        ));
    }

    #[test]
    fn full_stores_and_quotas() {
        for facts in [
            service(507, "XMinioStorageFull"),
            service(400, "XMinioAdminBucketQuotaExceeded"),
            service(403, "QuotaExceeded"),
            service(507, ""),
        ] {
            let err = run(&facts);
            assert!(
                matches!(err, StoreError::NoSpace(_)),
                "{facts:?} -> {err:?}"
            );
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn throttling() {
        for facts in [
            service(503, "SlowDown"),
            service(503, ""),
            service(429, ""),
            service(400, "Throttling"),
            service(400, "ThrottlingException"),
        ] {
            let err = run(&facts);
            assert!(
                matches!(err, StoreError::Throttled(_)),
                "{facts:?} -> {err:?}"
            );
            assert!(err.is_retryable());
        }
    }

    #[test]
    fn transient() {
        for facts in [
            service(500, "InternalError"),
            service(502, ""),
            service(503, "ServiceUnavailable"),
            service(504, "GatewayTimeout"),
            service(400, "RequestTimeout"),
            service(409, "OperationAborted"),
            other(FailureKind::Timeout, "attempt timeout"),
            other(FailureKind::Io, "connection refused"),
            other(FailureKind::Dispatch, "connection reset"),
            other(FailureKind::Response, "truncated body"),
        ] {
            let err = run(&facts);
            assert!(
                matches!(err, StoreError::Transient(_)),
                "{facts:?} -> {err:?}"
            );
            assert!(err.is_retryable());
        }
    }

    #[test]
    fn credentials_are_permanent() {
        for facts in [
            service(403, "AccessDenied"),
            service(403, "InvalidAccessKeyId"),
            service(403, "SignatureDoesNotMatch"),
            service(400, "ExpiredToken"),
            service(403, ""),
            other(
                FailureKind::Dispatch,
                "failed to resolve identity: no credentials provider",
            ),
            other(
                FailureKind::Construction,
                "the credential provider was not enabled",
            ),
        ] {
            let err = run(&facts);
            match &err {
                StoreError::Permanent(msg) => {
                    assert!(msg.contains("credentials"), "{msg}");
                    assert!(msg.contains("s3://bkt/pre/key"), "{msg}");
                }
                other => panic!("{facts:?} -> {other:?}"),
            }
        }
    }

    #[test]
    fn other_client_errors_are_permanent() {
        for facts in [
            service(400, "InvalidArgument"),
            service(400, ""),
            service(405, "MethodNotAllowed"),
            service(301, "PermanentRedirect"),
            other(FailureKind::Construction, "missing field"),
            other(FailureKind::User, "invalid uri"),
        ] {
            let err = run(&facts);
            assert!(
                matches!(err, StoreError::Permanent(_)),
                "{facts:?} -> {err:?}"
            );
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn messages_name_operation_and_object() {
        let err = run(&service(500, "InternalError"));
        let msg = err.to_string();
        assert!(msg.contains("PUT s3://bkt/pre/key"), "{msg}");
        assert!(msg.contains("500"), "{msg}");
    }

    #[test]
    fn keys_and_prefixes() {
        assert_eq!(normalize_prefix("/a//b/"), "a/b");
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(join_key("", "k"), "k");
        assert_eq!(join_key("a/b", "k/x"), "a/b/k/x");
        assert_eq!(parse_content_range_total("bytes 0-9/120"), Some(120));
        assert_eq!(parse_content_range_total("bytes */120"), Some(120));
        assert_eq!(parse_content_range_total("garbage"), None);
    }
}
