//! A stand-in OpenAI-compatible chat-completions server on host loopback
//! (no provider is reachable offline): every `POST .../chat/completions`
//! gets a 200 with a fixed `usage`, so the worker's LLM path (requests,
//! latency, tokens) runs for real against it. One thread per connection
//! (keep-alive); stopped and joined on drop.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

pub struct LlmStandIn {
    pub port: u16,
    /// Requests answered so far.
    pub requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl LlmStandIn {
    /// Answer every request with `prompt` + `completion` tokens of usage.
    pub fn start(prompt: u64, completion: u64) -> LlmStandIn {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (s, n) = (stop.clone(), requests.clone());
        let accept = std::thread::spawn(move || {
            for sock in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(sock) = sock else { continue };
                let n = n.clone();
                std::thread::spawn(move || serve(sock, n, prompt, completion));
            }
        });
        LlmStandIn {
            port,
            requests,
            stop,
            accept: Some(accept),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

impl Drop for LlmStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut sock: TcpStream, n: Arc<AtomicUsize>, prompt: u64, completion: u64) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())
                    .flatten()
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        let body: Value =
            serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
        buf.drain(..head_end + len);
        let i = n.fetch_add(1, Ordering::SeqCst);
        let (code, reply) = if head.starts_with("POST ") && head.contains("/chat/completions ") {
            (
                200,
                json!({
                    "id": format!("chatcmpl-{i}"),
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("def f{i}(): return {i}")}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
                }),
            )
        } else {
            (404, json!({"error": {"message": "not here"}}))
        };
        let reply = reply.to_string();
        let resp = format!(
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if sock.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}
