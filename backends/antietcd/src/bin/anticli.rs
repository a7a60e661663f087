//! `anticli`: antietcd 1.3.1's command-line client (get, put, del, load, watch), same flags, output and exit
//! codes, except that keys and values are used as given (antietcd lower-cases them) and `--no-temp` works.
//!
//! ```text
//! anticli [OPTIONS] put <key> [<value>]
//! anticli [OPTIONS] get <key>... [-p|--prefix] [-v|--print-value-only] [-k|--keys-only] [--no-temp]
//! anticli [OPTIONS] del <key>... [-p|--prefix]
//! anticli [OPTIONS] watch [<key>...] [-p|--prefix] [--revision REV]
//! anticli [OPTIONS] load [--with-lease] < dump.json
//! OPTIONS: -e|--endpoints URL[,URL] --cert F --key F --ca F --timeout MS --base64 1 --json
//! ```

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

const HELP: &str = "CLI for AntiEtcd (Rust)

Usage:

anticli [OPTIONS] put <key> [<value>]
anticli [OPTIONS] get <key> [-p|--prefix] [-v|--print-value-only] [-k|--keys-only] [--no-temp]
anticli [OPTIONS] del <key> [-p|--prefix]
anticli [OPTIONS] watch <key> [key...] [-p|--prefix] [--revision REV]
anticli [OPTIONS] load [--with-lease] < dump.json

Options:

[--endpoints|-e http://node1:2379,http://node2:2379,http://node3:2379]
[--cert cert.pem] [--key key.pem] [--ca ca.pem] [--timeout 1000] [--base64 1] [--json]
";

#[derive(Debug, Default)]
struct Options {
    endpoints: Vec<String>,
    prefix: bool,
    print_value_only: bool,
    keys_only: bool,
    with_lease: bool,
    json: bool,
    no_temp: bool,
    cert: Option<String>,
    key: Option<String>,
    ca: Option<String>,
    timeout: u64,
    base64: bool,
    revision: Option<String>,
}

/// Why the command stops: a message for stderr (already printed when empty) and exit code 1.
#[derive(Debug)]
struct Fail(String);

fn parse(args: Vec<String>) -> Result<(Vec<String>, Options), ExitCode> {
    let mut cmd = Vec::new();
    let mut o = Options { timeout: 1000, base64: true, ..Default::default() };
    let mut it = args.into_iter();
    let next = |it: &mut std::vec::IntoIter<String>, name: &str| -> Result<String, ExitCode> {
        it.next().ok_or_else(|| {
            eprint!("Option {name} needs a value");
            ExitCode::FAILURE
        })
    };
    while let Some(raw) = it.next() {
        let arg = match raw.strip_prefix("--") {
            Some(name) => format!("--{}", name.to_ascii_lowercase().replace('-', "_")),
            None if raw.starts_with('-') => raw.to_ascii_lowercase(),
            None => {
                cmd.push(raw);
                continue;
            }
        };
        match arg.as_str() {
            "-h" | "--help" => {
                eprint!("{HELP}");
                return Err(ExitCode::SUCCESS);
            }
            "-e" | "--endpoints" => {
                o.endpoints = next(&mut it, &arg)?
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "-p" | "--prefix" => o.prefix = true,
            "-v" | "--print_value_only" => o.print_value_only = true,
            "-k" | "--keys_only" => o.keys_only = true,
            "--with_lease" => o.with_lease = true,
            "--json" | "--write_out=json" => o.json = true,
            "--no_temp" => o.no_temp = true,
            "--write_out" => {
                if next(&mut it, &arg)? == "json" {
                    o.json = true;
                }
            }
            "--cert" => o.cert = Some(next(&mut it, &arg)?),
            "--key" => o.key = Some(next(&mut it, &arg)?),
            "--ca" => o.ca = Some(next(&mut it, &arg)?),
            "--timeout" => {
                let v = next(&mut it, &arg)?;
                o.timeout = v.parse().map_err(|_| {
                    eprint!("Bad --timeout {v}");
                    ExitCode::FAILURE
                })?
            }
            "--base64" => o.base64 = matches!(next(&mut it, &arg)?.as_str(), "1" | "true" | "yes" | "on"),
            "--revision" => o.revision = Some(next(&mut it, &arg)?),
            a if !a.starts_with("--") => {
                eprint!("Unknown option {a}");
                return Err(ExitCode::FAILURE);
            }
            a => {
                // antietcd takes any other --name with a value; we say it is unknown.
                eprint!("Unknown option {a}");
                return Err(ExitCode::FAILURE);
            }
        }
    }
    if !matches!(cmd.first().map(String::as_str), Some("get" | "put" | "del" | "load" | "watch")) {
        eprintln!("Supported commands: get, put, del, load, watch. Use --help to see details");
        return Err(ExitCode::FAILURE);
    }
    if o.endpoints.is_empty() {
        o.endpoints = vec!["http://localhost:2379".to_owned()];
    }
    Ok((cmd, o))
}

fn main() -> ExitCode {
    let (cmd, options) = match parse(std::env::args().skip(1).collect()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("anticli: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = match Cli::new(options) {
        Ok(c) => c,
        Err(Fail(msg)) => {
            eprintln!("{msg}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli.run(&cmd));
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg)) => {
            if !msg.is_empty() {
                eprintln!("{msg}");
            }
            ExitCode::FAILURE
        }
    }
}

struct Cli {
    o: Options,
    http: reqwest::Client,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Cli {
    fn new(o: Options) -> Result<Cli, Fail> {
        let cert_key = match (&o.cert, &o.key) {
            (Some(c), Some(k)) => Some((c.as_str(), k.as_str())),
            _ => None,
        };
        let tls = if o.ca.is_some()
            || cert_key.is_some()
            || o.endpoints.iter().any(|e| e.starts_with("https"))
        {
            Some(antietcd::tls::client_config(o.ca.as_deref(), cert_key).map_err(|e| Fail(e.to_string()))?)
        } else {
            None
        };
        let mut builder = reqwest::Client::builder().http1_only();
        if o.timeout > 0 {
            builder = builder.timeout(Duration::from_millis(o.timeout));
        }
        if let Some(tls) = &tls {
            builder = builder.use_preconfigured_tls((**tls).clone());
        }
        let http = builder.build().map_err(|e| Fail(format!("HTTP client: {e}")))?;
        Ok(Cli { o, http, tls })
    }

    fn b64(&self, s: &str) -> String {
        if self.o.base64 {
            base64::engine::general_purpose::STANDARD.encode(s)
        } else {
            s.to_owned()
        }
    }

    fn de64(&self, v: &Value) -> String {
        let s = v.as_str().unwrap_or("");
        if self.o.base64 {
            let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            s.to_owned()
        }
    }

    async fn run(&self, cmd: &[String]) -> Result<(), Fail> {
        let args = &cmd[1..];
        match cmd[0].as_str() {
            "get" => self.get(args).await,
            "put" => match args {
                [key] => {
                    let mut value = String::new();
                    std::io::stdin()
                        .read_to_string(&mut value)
                        .map_err(|e| Fail(format!("reading stdin: {e}")))?;
                    self.put(key, &value).await
                }
                [key, value, ..] => self.put(key, value).await,
                [] => Err(Fail("put needs a key".to_owned())),
            },
            "del" => self.del(args).await,
            "load" => self.load().await,
            _ => self.watch(args).await,
        }
    }

    /// POSTs to each endpoint in turn, as antietcd's anticli does.
    async fn request(&self, path: &str, body: &Value) -> Result<Value, Fail> {
        for url in &self.o.endpoints {
            let url = format!("{}{path}", url.trim_end_matches('/'));
            let resp = self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    let what = if e.is_timeout() { "timeout".to_owned() } else { e.to_string() };
                    eprintln!("{url}: {what}");
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let is_json = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("application/json"));
            let text = resp.text().await.map_err(|e| Fail(format!("{url}: {e}")))?;
            if status != 200 || !is_json {
                eprintln!("{url}: {text}");
                return Err(Fail(String::new()));
            }
            let v: Value = serde_json::from_str(&text).map_err(|e| Fail(format!("{url}: {e}")))?;
            if let Some(err) = v.get("error") {
                let err = err.as_str().map(str::to_owned).unwrap_or_else(|| err.to_string());
                return Err(Fail(format!("{url}: {err}")));
            }
            return Ok(v);
        }
        Err(Fail(String::new()))
    }

    fn ranges(&self, keys: &[String]) -> Vec<Value> {
        keys.iter()
            .map(|k| {
                if self.o.prefix {
                    let k = k.trim_end_matches('/');
                    json!({"key": self.b64(&format!("{k}/")), "range_end": self.b64(&format!("{k}0"))})
                } else {
                    json!({"key": self.b64(k)})
                }
            })
            .collect()
    }

    async fn get(&self, keys: &[String]) -> Result<(), Fail> {
        let success: Vec<Value> =
            self.ranges(keys).into_iter().map(|r| json!({"request_range": r})).collect();
        let mut res = self.request("/v3/kv/txn", &json!({"success": success})).await?;
        if self.o.no_temp {
            if let Some(Value::Array(rs)) = res.get_mut("responses") {
                for r in rs {
                    if let Some(Value::Array(kvs)) = r.pointer_mut("/response_range/kvs") {
                        kvs.retain(|kv| kv.get("lease").is_none_or(|l| l.is_null() || l == ""));
                    }
                }
            }
        }
        let mut out = std::io::stdout().lock();
        if self.o.json {
            let v = if keys.len() == 1 {
                res.pointer("/responses/0/response_range").cloned().unwrap_or(Value::Null)
            } else {
                res
            };
            let _ = write!(out, "{v}");
            return Ok(());
        }
        for r in res.get("responses").and_then(Value::as_array).into_iter().flatten() {
            for kv in r.pointer("/response_range/kvs").and_then(Value::as_array).into_iter().flatten() {
                if !self.o.print_value_only {
                    let _ = writeln!(out, "{}", self.de64(&kv["key"]));
                }
                if !self.o.keys_only {
                    let _ = writeln!(out, "{}", self.de64(&kv["value"]));
                }
            }
        }
        Ok(())
    }

    async fn put(&self, key: &str, value: &str) -> Result<(), Fail> {
        let res =
            self.request("/v3/kv/put", &json!({"key": self.b64(key), "value": self.b64(value)})).await?;
        if res.get("header").is_some() {
            println!("OK");
        }
        Ok(())
    }

    async fn del(&self, keys: &[String]) -> Result<(), Fail> {
        let success: Vec<Value> =
            self.ranges(keys).into_iter().map(|r| json!({"request_delete_range": r})).collect();
        let res = self.request("/v3/kv/txn", &json!({"success": success})).await?;
        for r in res.get("responses").and_then(Value::as_array).into_iter().flatten() {
            if let Some(d) = r.get("response_delete_range") {
                println!("{}", d.get("deleted").cloned().unwrap_or(Value::Null));
            }
        }
        Ok(())
    }

    async fn load(&self) -> Result<(), Fail> {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| Fail(format!("reading stdin: {e}")))?;
        let dump: Value = serde_json::from_str(&text).map_err(|e| Fail(format!("SyntaxError: {e}")))?;
        let ranges: Vec<&Value> = if let Some(rs) = dump.get("responses").and_then(Value::as_array) {
            rs.iter().filter_map(|r| r.get("response_range")).collect()
        } else if dump.get("kvs").is_some() {
            vec![&dump]
        } else {
            return Err(Fail("dump should be /kv/txn or /kv/range response in json format".to_owned()));
        };
        let mut success = Vec::new();
        for r in ranges {
            for kv in r.get("kvs").and_then(Value::as_array).into_iter().flatten() {
                if kv.get("value").is_none_or(Value::is_null) {
                    return Err(Fail("dump should contain values".to_owned()));
                }
                let mut put = json!({"key": kv["key"], "value": kv["value"]});
                if self.o.with_lease {
                    if let Some(l) = kv.get("lease").filter(|l| !l.is_null() && *l != "") {
                        put["lease"] = l.clone();
                    }
                }
                success.push(json!({"request_put": put}));
            }
        }
        let n = success.len();
        let res = self.request("/v3/kv/txn", &json!({"success": success})).await?;
        if self.o.json {
            print!("{res}");
        } else if res.get("succeeded") == Some(&Value::Bool(true)) {
            println!("OK, loaded {n} values");
        }
        Ok(())
    }

    async fn watch(&self, keys: &[String]) -> Result<(), Fail> {
        let prefix = self.o.prefix || keys.is_empty();
        let keys: Vec<String> = if keys.is_empty() { vec![String::new()] } else { keys.to_vec() };
        for url in &self.o.endpoints {
            let ws_url = format!("{}/watch", url.replacen("http", "ws", 1).trim_end_matches('/'));
            let connector = self.tls.clone().map(tokio_tungstenite::Connector::Rustls);
            let connected =
                tokio_tungstenite::connect_async_tls_with_config(ws_url.as_str(), None, false, connector)
                    .await;
            let (mut ws, _) = match connected {
                Ok(c) => c,
                Err(e) => {
                    println!("{ws_url}: {e}");
                    continue;
                }
            };
            for (i, k) in keys.iter().enumerate() {
                let k = if prefix { k.trim_end_matches('/') } else { k.as_str() };
                let mut req = json!({
                    "key": self.b64(&if prefix { format!("{k}/") } else { k.to_owned() }),
                    "watch_id": i + 1,
                    "progress_notify": true,
                });
                if prefix {
                    req["range_end"] = self.b64(&format!("{k}0")).into();
                }
                if let Some(rev) = &self.o.revision {
                    req["start_revision"] =
                        rev.parse::<i64>().map(Value::from).unwrap_or_else(|_| rev.clone().into());
                }
                let msg = json!({"create_request": req}).to_string();
                if ws.send(tokio_tungstenite::tungstenite::Message::Text(msg.into())).await.is_err() {
                    break;
                }
            }
            while let Some(msg) = ws.next().await {
                let text = match msg {
                    Ok(tokio_tungstenite::tungstenite::Message::Text(t)) => t.to_string(),
                    Ok(tokio_tungstenite::tungstenite::Message::Close(_)) => return Ok(()),
                    Ok(_) => continue,
                    Err(e) => {
                        println!("{e}");
                        break;
                    }
                };
                let mut v: Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(_) => {
                        eprintln!("{}", Value::String(format!("Bad JSON received from websocket: {text}")));
                        continue;
                    }
                };
                if self.o.base64 {
                    if let Some(Value::Array(evs)) = v.pointer_mut("/result/events") {
                        for ev in evs {
                            if let Some(kv) = ev.get_mut("kv").and_then(Value::as_object_mut) {
                                for f in ["key", "value"] {
                                    if let Some(x) = kv.get(f).cloned() {
                                        kv.insert(f.to_owned(), self.de64(&x).into());
                                    }
                                }
                            }
                        }
                    }
                }
                println!("{v}");
                let _ = std::io::stdout().flush();
            }
        }
        Ok(())
    }
}
