//! Signed S3 requests that `object_store` cannot make, built by hand, signed with
//! AWS Signature Version 4 ([`sign`]) using object_store's credential provider, and sent
//! with hyper: no second SDK.
//!
//! Two users: the Object Lock calls on the target (`target/s3/object_lock.rs`), and a bucket source,
//! whose keys are whatever its owner wrote (`source::bucket`). object_store refuses keys
//! with empty or `.`/`..` segments and control characters, so the source lists, reads
//! and writes back by exact key here.
//!
//! Requests are signed and sent with the request target exactly as written
//! ([`ExactPaths`], [`sign`]): reqwest and object_store's signer parse every URL with
//! the WHATWG rules, which drop `.` and `..` segments (even percent-encoded ones), so the
//! key `a/../x` would be signed, or sent, as `x`.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http::{Method, Request, StatusCode};
use object_store::aws::{AwsCredential, AwsCredentialProvider};
use object_store::client::{
    HttpClient, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse, HttpResponseBody, HttpService,
};
use serde::Deserialize;
use sha2::Digest;

use crate::retry::Retry;

/// One bucket (and key prefix) of an S3 server, and how to sign for it.
#[derive(Clone)]
pub struct S3Client {
    client: HttpClient,
    credentials: AwsCredentialProvider,
    /// `https://host/bucket` (path style) or `https://bucket.s3.region.amazonaws.com`.
    bucket_url: String,
    /// Key prefix with a trailing `/`, or empty.
    prefix: String,
    region: String,
    /// How transient failures are retried (budget, shutdown).
    retry: Retry,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Client({}/{})", self.bucket_url, self.prefix)
    }
}

/// A server's answer.
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// An object as a listing gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The key relative to the prefix, exactly as stored.
    pub key: String,
    pub size: u64,
    /// Without quotes.
    pub etag: Option<String>,
    /// Unix nanoseconds.
    pub last_modified_ns: i64,
}

/// A body's digests, computed once however often its request is retried: SHA-256 (the
/// payload signature, and `x-amz-checksum-sha256`) and, for a body, MD5. A PUT carries
/// both: AWS and moto refuse lock headers without a checksum, and Backblaze B2 and some
/// MinIO versions take only `Content-MD5`.
struct Digests {
    sha256: [u8; 32],
    md5: Option<[u8; 16]>,
}

impl Digests {
    fn of(body: &Bytes) -> Digests {
        Digests {
            sha256: sha2::Sha256::digest(body).into(),
            md5: (!body.is_empty()).then(|| <md5::Md5 as md5::Digest>::digest(body).into()),
        }
    }
}

/// An error with every cause under it (`connection refused`, the DNS or TLS failure),
/// which the HTTP client's own message leaves out.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(&format!(": {c}"));
        }
        next = cause.source();
    }
    text
}

/// Answers worth retrying: server errors, SlowDown (503), throttling and request timeouts.
fn transient(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
}

/// The most bytes coffer reads of an answer to a signed request: a listing page of a
/// thousand keys is well under a MiB.
pub const MAX_ANSWER: u64 = 16 << 20;

/// Parts of a multipart upload (S3's minimum is 5 MiB, but the last).
pub const PART_SIZE: usize = 8 << 20;

impl S3Client {
    pub fn new(
        credentials: AwsCredentialProvider,
        endpoint: Option<&str>,
        bucket: &str,
        prefix: &str,
        region: &str,
    ) -> Result<S3Client> {
        let bucket_url = match endpoint {
            Some(ep) => format!("{}/{}", ep.trim_end_matches('/'), bucket),
            None => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        };
        let client = HttpClient::new(ExactPaths::new()?);
        let prefix = match prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        Ok(S3Client { client, credentials, bucket_url, prefix, region: region.to_string(), retry: Retry::brief() })
    }

    /// The same calls, retried under `retry` (a run's budget and shutdown flag).
    pub fn with_retry(mut self, retry: Retry) -> S3Client {
        self.retry = retry;
        self
    }

    pub fn bucket_url(&self) -> &str {
        &self.bucket_url
    }

    /// The key prefix, with a trailing `/` (or empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The URL of `key` (relative to the prefix), with a query string if not empty.
    pub fn object_url(&self, key: &str, query: &str) -> String {
        let path = encode_key(&format!("{}{key}", self.prefix));
        if query.is_empty() {
            format!("{}/{path}", self.bucket_url)
        } else {
            format!("{}/{path}?{query}", self.bucket_url)
        }
    }

    /// Signs a request; a body goes with its length, and a PUT with its `digests`. The
    /// SHA-256 digest also signs the payload.
    async fn request(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&str, String)],
        body: &Bytes,
        digests: &Digests,
    ) -> Result<Request<HttpRequestBody>> {
        let credential = self.credentials.get_credential().await.context("no S3 credentials")?;
        let mut builder = Request::builder().method(method.clone()).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, v);
        }
        if *method == Method::PUT || *method == Method::POST {
            // Also for an empty body: a PUT without a length is refused (411).
            builder = builder.header("content-length", body.len().to_string());
        }
        if let (Some(md5), true) = (digests.md5, *method == Method::PUT) {
            let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
            builder = builder.header("x-amz-checksum-sha256", b64(&digests.sha256));
            builder = builder.header("content-md5", b64(&md5));
        }
        let mut req = builder.body(HttpRequestBody::from(body.clone())).context("bad request")?;
        sign(&mut req, &credential, &self.region, &digests.sha256, chrono::Utc::now())
            .context("cannot sign the request")?;
        Ok(req)
    }

    /// Sends a signed request and reads the whole answer (at most [`MAX_ANSWER`] bytes),
    /// retrying connection errors and transient answers with backoff under the run's
    /// budget.
    pub async fn send(&self, method: Method, url: &str, headers: &[(&str, String)], body: Bytes) -> Result<Answer> {
        let digests = Digests::of(&body);
        let mut attempt = 0;
        loop {
            let req = self.request(&method, url, headers, &body, &digests).await?;
            let failure = match self.execute(req, body.len()).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let announced = parts.headers.get("content-length").and_then(|v| v.to_str().ok()?.parse().ok());
                    let what = format!("{method} {}", self.describe(url));
                    let read = crate::bounded::collect(body.bytes_stream(), announced, MAX_ANSWER, &what);
                    // At the slowest rate coffer accepts, a whole answer takes this long.
                    let allowed = ANSWER_TIMEOUT + Duration::from_secs(MAX_ANSWER / SLOWEST_UPLOAD as u64);
                    let read = tokio::time::timeout(allowed, read)
                        .await
                        .unwrap_or_else(|_| Err(anyhow!("{what}: the answer did not arrive within {allowed:?}")));
                    match read {
                        Ok(bytes) if !transient(parts.status) => {
                            let (status, headers) = (parts.status, parts.headers);
                            return Ok(Answer { status, headers, body: bytes });
                        }
                        Ok(bytes) => format!("HTTP {} {}", parts.status, error_code(&bytes)),
                        Err(e) => format!("reading the answer: {e:#}"),
                    }
                }
                Err(e) => causes(&e),
            };
            attempt += 1;
            let what = format!("{method} {} at {}: {failure}", self.describe(url), self.endpoint());
            self.retry.wait(attempt, &what).await?;
        }
    }

    /// Sends a request, allowing the server [`ANSWER_TIMEOUT`] to answer with its head,
    /// plus the time the body takes at [`SLOWEST_UPLOAD`] bytes a second: a server that
    /// never answers is found out in a minute, not after the whole retry budget.
    async fn execute(&self, req: Request<HttpRequestBody>, body_len: usize) -> Result<HttpResponse, HttpError> {
        let allowed = ANSWER_TIMEOUT + Duration::from_secs((body_len / SLOWEST_UPLOAD) as u64);
        match tokio::time::timeout(allowed, self.client.execute(req)).await {
            Ok(answer) => answer,
            Err(e) => Err(HttpError::new(HttpErrorKind::Timeout, e)),
        }
    }

    /// The server's scheme, host and port, which errors name.
    pub fn endpoint(&self) -> &str {
        let after_scheme = self.bucket_url.find("://").map_or(0, |i| i + 3);
        let end = self.bucket_url[after_scheme..].find('/').map_or(self.bucket_url.len(), |i| after_scheme + i);
        &self.bucket_url[..end]
    }

    /// A URL as logs show it: the object key or bucket call, without the endpoint.
    pub fn describe<'a>(&self, url: &'a str) -> &'a str {
        url.strip_prefix(&self.bucket_url).unwrap_or(url)
    }

    /// Every object under the prefix, by exact key (ListObjectsV2, keys URL-encoded on
    /// the wire so that any byte a key holds survives the XML).
    pub async fn list_objects(&self) -> Result<Vec<Listed>> {
        self.list_under("").await
    }

    /// Every current object under the prefix followed by `sub`, by exact key: as many as
    /// a listing may keep ([`crate::bounded::Listing`]).
    pub async fn list_under(&self, sub: &str) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut listing = crate::bounded::Listing::default();
        loop {
            let prefix = format!("{}{sub}", self.prefix);
            let mut query = format!("list-type=2&encoding-type=url&prefix={}", encode_query(&prefix));
            if let Some(t) = &token {
                query.push_str(&format!("&continuation-token={}", encode_query(t)));
            }
            let url = format!("{}/?{query}", self.bucket_url);
            let a = self.send(Method::GET, &url, &[], Bytes::new()).await?;
            if !a.status.is_success() {
                return Err(s3_error("ListObjectsV2", "", a.status, &a.body));
            }
            let page: ListXml = parse_xml(&a.body, "ListObjectsV2")?;
            for o in page.contents {
                let key = decode_url(&o.key).ok_or_else(|| anyhow!("ListObjectsV2: a key is not URL-encoded UTF-8"))?;
                let Some(key) = key.strip_prefix(&self.prefix) else { continue };
                let last_modified_ns = crate::time::parse_utc(&o.last_modified).unwrap_or(0) * 1_000_000_000;
                let etag = o.e_tag.map(|e| e.trim_matches('"').to_string());
                listing.keep(key.len() + etag.as_ref().map_or(0, String::len), "ListObjectsV2")?;
                out.push(Listed { key: key.to_string(), size: o.size, etag, last_modified_ns });
            }
            match (page.is_truncated, page.next_continuation_token) {
                (true, Some(t)) => {
                    listing.next_page(&t, "ListObjectsV2")?;
                    token = Some(t)
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Reads an object by exact key as a stream, only if it still has `etag` (412 is
    /// reported as a change); with its content type.
    pub async fn get_object(
        &self,
        key: &str,
        etag: Option<&str>,
    ) -> Result<(BoxStream<'static, Result<Bytes>>, Option<String>)> {
        let url = self.object_url(key, "");
        let headers: Vec<(&str, String)> = etag.map(|e| ("if-match", format!("\"{e}\""))).into_iter().collect();
        let mut attempt = 0;
        loop {
            let req = self.request(&Method::GET, &url, &headers, &Bytes::new(), &Digests::of(&Bytes::new())).await?;
            let failure = match self.execute(req, 0).await {
                Ok(resp) if resp.status().is_success() => {
                    let content_type =
                        resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
                    let stream = resp.into_body().bytes_stream().map(|b| b.map_err(anyhow::Error::from)).boxed();
                    return Ok((stream, content_type));
                }
                Ok(resp) if resp.status() == StatusCode::PRECONDITION_FAILED => {
                    bail!("changed while it was being backed up")
                }
                Ok(resp) => {
                    let status = resp.status();
                    let body = crate::bounded::collect(resp.into_body().bytes_stream(), None, 64 << 10, "an error")
                        .await
                        .unwrap_or_default();
                    if !transient(status) {
                        return Err(s3_error("GetObject", key, status, &body));
                    }
                    format!("HTTP {status} {}", error_code(&body))
                }
                Err(e) => causes(&e),
            };
            attempt += 1;
            self.retry.wait(attempt, &format!("GET {key} at {}: {failure}", self.endpoint())).await?;
        }
    }

    /// Writes one object by exact key in one PUT.
    pub async fn put_object(&self, key: &str, content_type: Option<&str>, body: Bytes) -> Result<()> {
        let headers: Vec<(&str, String)> = content_type.map(|c| ("content-type", c.to_string())).into_iter().collect();
        let a = self.send(Method::PUT, &self.object_url(key, ""), &headers, body).await?;
        if !a.status.is_success() {
            return Err(s3_error("PutObject", key, a.status, &a.body));
        }
        Ok(())
    }

    async fn create_multipart(&self, key: &str, content_type: Option<&str>) -> Result<String> {
        let headers: Vec<(&str, String)> = content_type.map(|c| ("content-type", c.to_string())).into_iter().collect();
        let a = self.send(Method::POST, &self.object_url(key, "uploads="), &headers, Bytes::new()).await?;
        if !a.status.is_success() {
            return Err(s3_error("CreateMultipartUpload", key, a.status, &a.body));
        }
        Ok(parse_xml::<InitiateXml>(&a.body, "CreateMultipartUpload")?.upload_id)
    }

    async fn upload_part(&self, key: &str, upload: &str, number: u32, body: Bytes) -> Result<String> {
        let query = format!("partNumber={number}&uploadId={}", encode_query(upload));
        let a = self.send(Method::PUT, &self.object_url(key, &query), &[], body).await?;
        if !a.status.is_success() {
            return Err(s3_error("UploadPart", key, a.status, &a.body));
        }
        let etag = a.headers.get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
        etag.ok_or_else(|| anyhow!("UploadPart {key}: no ETag in the answer"))
    }

    async fn complete_multipart(&self, key: &str, upload: &str, parts: &[(u32, String)]) -> Result<()> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            xml.push_str(&format!("<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>", xml_escape(etag)));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let url = self.object_url(key, &format!("uploadId={}", encode_query(upload)));
        let a = self.send(Method::POST, &url, &[], Bytes::from(xml)).await?;
        // S3 may answer 200 with an error in the body.
        if !a.status.is_success() || String::from_utf8_lossy(&a.body).contains("<Error>") {
            return Err(s3_error("CompleteMultipartUpload", key, a.status, &a.body));
        }
        Ok(())
    }

    async fn abort_multipart(&self, key: &str, upload: &str) {
        let url = self.object_url(key, &format!("uploadId={}", encode_query(upload)));
        let _ = self.send(Method::DELETE, &url, &[], Bytes::new()).await;
    }
}

/// Signs a request with AWS Signature Version 4 for S3, over its path and query exactly
/// as they will be sent, and every header it carries (plus `host`, `x-amz-date`,
/// `x-amz-content-sha256` and the session token, which it adds).
pub fn sign<B>(
    req: &mut Request<B>,
    credential: &AwsCredential,
    region: &str,
    payload_sha256: &[u8; 32],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<()> {
    use hmac::Mac;
    let hmac = |key: &[u8], data: &str| -> Result<[u8; 32]> {
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).map_err(|e| anyhow!("hmac: {e}"))?;
        m.update(data.as_bytes());
        Ok(m.finalize().into_bytes().into())
    };
    let host = req.uri().authority().ok_or_else(|| anyhow!("no host in {}", req.uri()))?.to_string();
    let (date, stamp) = (now.format("%Y%m%d").to_string(), now.format("%Y%m%dT%H%M%SZ").to_string());
    let headers = req.headers_mut();
    headers.insert("host", host.parse()?);
    headers.insert("x-amz-date", stamp.parse()?);
    headers.insert("x-amz-content-sha256", crate::hex::encode(payload_sha256).parse()?);
    if let Some(token) = &credential.token {
        headers.insert("x-amz-security-token", token.parse()?);
    }
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| Ok((k.as_str().to_ascii_lowercase(), v.to_str()?.trim().to_string())))
        .collect::<Result<_>>()?;
    signed.sort();
    let names: Vec<&str> = signed.iter().map(|(k, _)| k.as_str()).collect();
    let names = names.join(";");
    let mut query: Vec<(&str, &str)> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    query.sort();
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let canonical = format!(
        "{}\n{}\n{}\n{}\n\n{names}\n{}",
        req.method(),
        req.uri().path(),
        query.join("&"),
        signed.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join("\n"),
        crate::hex::encode(payload_sha256)
    );
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        crate::hex::encode(&sha2::Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{}", credential.secret_key).as_bytes(), &date)?;
    for part in [region, "s3", "aws4_request"] {
        key = hmac(&key, part)?;
    }
    let signature = crate::hex::encode(&hmac(&key, &to_sign)?);
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={names},Signature={signature}",
        credential.key_id
    );
    req.headers_mut().insert("authorization", auth.parse()?);
    Ok(())
}

/// An HTTP client that sends the request target as given: hyper, with rustls and the
/// platform's certificate verifier (as object_store's reqwest client has).
#[derive(Debug)]
struct ExactPaths(
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        HttpRequestBody,
    >,
);

/// How long a server has to answer a request with its head (after its body was sent).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The slowest upload coffer waits for: bytes a second (a 16 MiB pack: 2 minutes more).
const SLOWEST_UPLOAD: usize = 128 << 10;

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ExactPaths {
    fn new() -> Result<ExactPaths> {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .context("cannot load the platform's TLS certificate verifier")?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        Ok(ExactPaths(client))
    }
}

#[async_trait::async_trait]
impl HttpService for ExactPaths {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        use http_body_util::BodyExt;
        let answer = self.0.request(req).await.map_err(|e| {
            let kind = if e.is_connect() { HttpErrorKind::Connect } else { HttpErrorKind::Request };
            HttpError::new(kind, e)
        })?;
        let (parts, body) = answer.into_parts();
        let body = body.map_err(|e| HttpError::new(HttpErrorKind::Decode, e));
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

/// An object written by exact key: one PUT if it is small, a multipart upload of
/// [`PART_SIZE`] parts if not. It appears under its key only when finished.
pub struct Upload {
    client: S3Client,
    key: String,
    content_type: Option<String>,
    buffer: Vec<u8>,
    upload: Option<String>,
    parts: Vec<(u32, String)>,
}

impl Upload {
    pub fn new(client: &S3Client, key: &str, content_type: Option<&str>) -> Upload {
        Upload {
            client: client.clone(),
            key: key.to_string(),
            content_type: content_type.map(str::to_string),
            buffer: Vec::new(),
            upload: None,
            parts: Vec::new(),
        }
    }

    pub async fn put(&mut self, data: &[u8]) -> Result<()> {
        self.buffer.extend_from_slice(data);
        while self.buffer.len() >= PART_SIZE {
            let part = Bytes::from(self.buffer.drain(..PART_SIZE).collect::<Vec<u8>>());
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn send_part(&mut self, part: Bytes) -> Result<()> {
        let upload = match &self.upload {
            Some(u) => u.clone(),
            None => {
                let u = self.client.create_multipart(&self.key, self.content_type.as_deref()).await?;
                self.upload = Some(u.clone());
                u
            }
        };
        let number = self.parts.len() as u32 + 1;
        let etag = self.client.upload_part(&self.key, &upload, number, part).await?;
        self.parts.push((number, etag));
        Ok(())
    }

    pub async fn finish(mut self) -> Result<()> {
        let rest = Bytes::from(std::mem::take(&mut self.buffer));
        let Some(upload) = self.upload.clone() else {
            return self.client.put_object(&self.key, self.content_type.as_deref(), rest).await;
        };
        if !rest.is_empty() {
            self.send_part(rest).await?;
        }
        let done = self.client.complete_multipart(&self.key, &upload, &self.parts).await;
        if done.is_err() {
            self.client.abort_multipart(&self.key, &upload).await;
        }
        done
    }

    pub async fn abort(self) {
        if let Some(upload) = &self.upload {
            self.client.abort_multipart(&self.key, upload).await;
        }
    }
}

/// Percent-encodes an object key for the URL path (keeping `/`). A `.` or `..` segment
/// stays as it is: S3 signs it so, and [`ExactPaths`] sends it unchanged.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn encode_query(v: &str) -> String {
    encode_key(v).replace('/', "%2F")
}

/// Undoes S3's `encoding-type=url` (percent-encoding, `+` for a space); `None` when the
/// result is not UTF-8.
fn decode_url(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The `<Code>` of an S3 error answer, escaped and cut short (the server may be hostile).
fn error_code(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let code = text.split("<Code>").nth(1).and_then(|t| t.split('<').next()).unwrap_or("");
    crate::escape::quote(code.as_bytes(), 64)
}

pub fn s3_error(op: &str, key: &str, status: StatusCode, body: &[u8]) -> anyhow::Error {
    let text = String::from_utf8_lossy(body);
    let message = text.split("<Message>").nth(1).and_then(|s| s.split("</Message>").next()).unwrap_or("");
    let (key, message) = (crate::escape::quote(key.as_bytes(), 300), crate::escape::quote(message.as_bytes(), 300));
    anyhow!("{op} {key}: HTTP {status} {} {message}", error_code(body))
}

pub fn parse_xml<T: serde::de::DeserializeOwned>(body: &[u8], op: &str) -> Result<T> {
    quick_xml::de::from_reader(body)
        .with_context(|| format!("{op}: unexpected answer {}", crate::escape::quote(body, 200)))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListXml {
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
    #[serde(default)]
    contents: Vec<ListedXml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedXml {
    key: String,
    last_modified: String,
    #[serde(rename = "ETag")]
    e_tag: Option<String>,
    #[serde(default)]
    size: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InitiateXml {
    upload_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_and_listings_decoded() {
        assert_eq!(encode_key("coffer/packs/ab/ab12"), "coffer/packs/ab/ab12");
        assert_eq!(encode_key("a b+c%"), "a%20b%2Bc%25");
        assert_eq!(encode_key("a/../x/./y/.z"), "a/../x/./y/.z");
        for key in ["50%.txt", "a//b", "../x", "\u{1}ctl\n", "ünï cödé+", "/lead", "trail/"] {
            assert_eq!(decode_url(&encode_query(key)).as_deref(), Some(key));
        }
        assert_eq!(decode_url("a+b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(decode_url("%zz"), None);
        assert_eq!(decode_url("%"), Some("%".into()));
        assert_eq!(decode_url("%ff"), None, "not UTF-8");
    }

    #[tokio::test]
    async fn a_server_that_is_down_is_named_with_the_cause() {
        let credential = AwsCredential { key_id: "k".into(), secret_key: "s".into(), token: None };
        let provider = std::sync::Arc::new(object_store::StaticCredentialProvider::new(credential));
        // Port 9 (discard) has no listener here: the connection is refused.
        let client = S3Client::new(provider, Some("http://127.0.0.1:9"), "b", "", "us-east-1")
            .unwrap()
            .with_retry(Retry::new(std::time::Duration::from_millis(300), None));
        let Err(e) = client.send(Method::GET, &client.object_url("k", ""), &[], Bytes::new()).await else {
            panic!("an answer from a port nobody serves")
        };
        let text = format!("{e:#}");
        assert!(text.contains("http://127.0.0.1:9") && text.contains("refused"), "{text}");
    }

    /// The example of AWS's documentation ("GET Object", Signature Version 4 for S3).
    #[test]
    fn requests_are_signed_as_aws_documents() {
        let mut req = Request::get("https://examplebucket.s3.amazonaws.com/test.txt")
            .header("range", "bytes=0-9")
            .body(())
            .unwrap();
        let credential = AwsCredential {
            key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            token: None,
        };
        let when = chrono::DateTime::parse_from_rfc3339("2013-05-24T00:00:00Z").unwrap().to_utc();
        sign(&mut req, &credential, "us-east-1", &sha2::Sha256::digest(b"").into(), when).unwrap();
        assert_eq!(
            req.headers()["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn a_listing_parses() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p%2F</Prefix><KeyCount>2</KeyCount><IsTruncated>true</IsTruncated><NextContinuationToken>tok</NextContinuationToken><EncodingType>url</EncodingType><Contents><Key>p/a%2F%2Fb</Key><LastModified>2026-11-23T11:12:13.000Z</LastModified><ETag>"e1"</ETag><Size>5</Size></Contents><Contents><Key>p/x</Key><LastModified>2026-11-23T11:12:14.000Z</LastModified><Size>0</Size></Contents></ListBucketResult>"#;
        let page: ListXml = parse_xml(xml, "test").unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_continuation_token.as_deref(), Some("tok"));
        assert_eq!(page.contents.len(), 2);
        assert_eq!(decode_url(&page.contents[0].key).as_deref(), Some("p/a//b"));
    }
}
