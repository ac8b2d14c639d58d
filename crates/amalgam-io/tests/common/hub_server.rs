//! A Hugging Face Hub stand-in on 127.0.0.1 for download tests (CI has no network and no
//! Python). It serves repositories through the same file API the Hub has:
//!
//! * `GET /api/models/{org}/{name}/revision/{rev}`: `{"id", "sha", "siblings": [{"rfilename"}]}`;
//! * `HEAD|GET /{org}/{name}/resolve/{rev}/{file}`: small files answer 200 with `ETag` = git blob
//!   sha1 and `X-Repo-Commit`; `*.safetensors` (LFS) answer 302 to `/lfs/{sha256}` with
//!   `X-Linked-Etag` = sha256 and `X-Linked-Size`, as the Hub redirects to its storage;
//! * `GET /lfs/{sha256}`: the bytes, honouring `Range: bytes=N-` with 206.
//!
//! A repository can require a bearer token (gated: 401 without it). Faults can be injected:
//! drop the connection half-way through a file once, serve corrupted bytes, answer 500 once.
//! Every request is recorded so tests can check what was asked for.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha1::Digest as _;

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path with each segment percent-decoded (so `refs%2Fpr%2F1` reads `refs/pr/1`).
    pub path: String,
    pub range: Option<String>,
    pub auth: Option<String>,
}

/// One repository: commits (sha -> files) and refs (branch or tag -> sha).
#[derive(Debug, Clone, Default)]
pub struct Repo {
    pub id: String,
    pub commits: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pub refs: BTreeMap<String, String>,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl Repo {
    /// A repository whose `main` is one commit holding `files`.
    pub fn new(id: &str, files: BTreeMap<String, Vec<u8>>) -> Self {
        let mut r = Repo {
            id: id.to_string(),
            ..Default::default()
        };
        let sha = fake_commit(id, &files);
        r.commits.insert(sha.clone(), files);
        r.refs.insert("main".into(), sha);
        r
    }

    /// Every regular file of `dir` (top level) as a repository's `main`.
    pub fn from_dir(id: &str, dir: &Path) -> Self {
        Repo::new(id, read_dir(dir))
    }

    /// The commit `main` points at.
    pub fn main(&self) -> String {
        self.refs["main"].clone()
    }

    /// Adds a commit and returns its sha.
    pub fn add_commit(&mut self, files: BTreeMap<String, Vec<u8>>) -> String {
        let sha = fake_commit(&format!("{}{}", self.id, self.commits.len()), &files);
        self.commits.insert(sha.clone(), files);
        sha
    }
}

/// The top-level files of a folder.
pub fn read_dir(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            files.insert(
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            );
        }
    }
    files
}

fn fake_commit(seed: &str, files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h = sha1::Sha1::new();
    h.update(seed.as_bytes());
    for (k, v) in files {
        h.update(k.as_bytes());
        h.update(v);
    }
    hex(&h.finalize())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha256(b: &[u8]) -> String {
    hex(&sha2::Sha256::digest(b))
}

/// The git blob id of `b`: what the Hub sends as the ETag of a small file.
pub fn git_sha1(b: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    hex(&h.finalize())
}

pub fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors")
}

#[derive(Default)]
struct State {
    repos: HashMap<String, Repo>,
    requests: Vec<Request>,
    /// File names whose next body transfer is cut half-way.
    drop_once: HashSet<String>,
    /// File names served with one byte flipped (every time).
    corrupt: HashSet<String>,
    /// Path substrings answered 500 once.
    fail_once: Vec<String>,
}

/// A running server; it stops when the test process ends.
pub struct HubServer {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

impl HubServer {
    pub fn start(repos: Vec<Repo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            repos: repos.into_iter().map(|r| (r.id.clone(), r)).collect(),
            ..Default::default()
        }));
        let st = state.clone();
        let ep = endpoint.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                let ep = ep.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, &st, &ep);
                });
            }
        });
        HubServer { endpoint, state }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    pub fn drop_once(&self, file: &str) {
        self.state.lock().unwrap().drop_once.insert(file.into());
    }

    pub fn corrupt(&self, file: &str) {
        self.state.lock().unwrap().corrupt.insert(file.into());
    }

    pub fn fail_once(&self, path_part: &str) {
        self.state.lock().unwrap().fail_once.push(path_part.into());
    }
}

fn decode(seg: &str) -> String {
    let b = seg.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&seg[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then close (the header still announces all of them).
    cut: Option<usize>,
}

fn answer(status: u16, body: &[u8]) -> Answer {
    Answer {
        status,
        headers: vec![],
        body: body.to_vec(),
        cut: None,
    }
}

fn handle(conn: TcpStream, st: &Mutex<State>, endpoint: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let raw_path = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let raw_path = raw_path.split('?').next().unwrap_or("").to_string();
    let segs: Vec<String> = raw_path
        .trim_start_matches('/')
        .split('/')
        .map(decode)
        .collect();
    let req = Request {
        method: method.clone(),
        path: segs.join("/"),
        range: headers.get("range").cloned(),
        auth: headers.get("authorization").cloned(),
    };
    let ans = {
        let mut s = st.lock().unwrap();
        s.requests.push(req.clone());
        route(&mut s, &req, &segs, endpoint)
    };
    let mut out = conn;
    let reason = match ans.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Error",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", ans.status);
    for (k, v) in &ans.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        ans.body.len()
    ));
    out.write_all(head.as_bytes())?;
    if method != "HEAD" {
        let n = ans.cut.unwrap_or(ans.body.len());
        out.write_all(&ans.body[..n])?;
    }
    out.flush()?;
    let _ = out.shutdown(std::net::Shutdown::Both);
    Ok(())
}

fn route(s: &mut State, req: &Request, segs: &[String], endpoint: &str) -> Answer {
    if let Some(i) = s
        .fail_once
        .iter()
        .position(|p| req.path.contains(p.as_str()))
    {
        s.fail_once.remove(i);
        return answer(500, b"temporary failure");
    }
    let seg = |i: usize| segs.get(i).map(String::as_str).unwrap_or("");
    // Storage: /lfs/<sha256>
    if seg(0) == "lfs" {
        let want = seg(1).to_string();
        let mut found = None;
        for r in s.repos.values() {
            for files in r.commits.values() {
                for (name, bytes) in files {
                    if sha256(bytes) == want {
                        found = Some((name.clone(), bytes.clone()));
                    }
                }
            }
        }
        let Some((name, bytes)) = found else {
            return answer(404, b"no such blob");
        };
        return body_answer(s, req, &name, bytes);
    }
    let (repo_id, rest) = if seg(0) == "api" && seg(1) == "models" {
        (format!("{}/{}", seg(2), seg(3)), 4)
    } else {
        (format!("{}/{}", seg(0), seg(1)), 2)
    };
    let Some(repo) = s.repos.get(&repo_id).cloned() else {
        // The Hub says 401 for a repository it will not admit exists.
        return answer(401, b"Repository not found");
    };
    if let Some(t) = &repo.token {
        if req.auth.as_deref() != Some(&format!("Bearer {t}")) {
            return answer(401, b"Access to this model is restricted");
        }
    }
    let rev_of = |rev: &str| -> Option<String> {
        if repo.commits.contains_key(rev) {
            Some(rev.to_string())
        } else {
            repo.refs.get(rev).cloned()
        }
    };
    if seg(0) == "api" {
        if seg(rest) != "revision" {
            return answer(404, b"bad api path");
        }
        let Some(sha) = rev_of(seg(rest + 1)) else {
            return answer(404, b"Revision not found");
        };
        let siblings: Vec<serde_json::Value> = repo.commits[&sha]
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "id": repo_id, "sha": sha, "siblings": siblings });
        let mut a = answer(200, body.to_string().as_bytes());
        a.headers
            .push(("Content-Type".into(), "application/json".into()));
        return a;
    }
    if seg(rest) != "resolve" {
        return answer(404, b"bad path");
    }
    let Some(sha) = rev_of(seg(rest + 1)) else {
        return answer(404, b"Revision not found");
    };
    let file = segs[rest + 2..].join("/");
    let Some(bytes) = repo.commits[&sha].get(&file).cloned() else {
        return answer(404, b"Entry not found");
    };
    if is_lfs(&file) {
        let mut a = answer(302, b"");
        a.headers = vec![
            (
                "Location".into(),
                format!("{endpoint}/lfs/{}", sha256(&bytes)),
            ),
            ("X-Repo-Commit".into(), sha.clone()),
            ("X-Linked-Etag".into(), format!("\"{}\"", sha256(&bytes))),
            ("X-Linked-Size".into(), bytes.len().to_string()),
            // The ETag of the redirect itself is the pointer file's, not the content's.
            ("ETag".into(), "\"0000pointer\"".into()),
        ];
        return a;
    }
    let etag = git_sha1(&bytes);
    let mut a = body_answer(s, req, &file, bytes);
    a.headers.push(("X-Repo-Commit".into(), sha));
    a.headers.push(("ETag".into(), format!("\"{etag}\"")));
    a
}

fn body_answer(s: &mut State, req: &Request, name: &str, mut bytes: Vec<u8>) -> Answer {
    let range = req.range.as_deref();
    if s.corrupt.contains(name) {
        if let Some(b) = bytes.last_mut() {
            *b ^= 0xff;
        }
    }
    let total = bytes.len();
    let mut a = match range.and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
    {
        Some(start) if start >= total => return answer(416, b""),
        Some(start) => {
            let mut a = answer(206, &bytes[start..]);
            a.headers.push((
                "Content-Range".into(),
                format!("bytes {start}-{}/{total}", total - 1),
            ));
            a
        }
        None => answer(200, &bytes),
    };
    if req.method == "GET" && s.drop_once.remove(name) {
        a.cut = Some(a.body.len() / 2);
    }
    a
}
