//! `cargo xtask demo`: Envoy + filter on 127.0.0.1 with the embedded default bundle.

use std::sync::mpsc;
use std::time::Duration;

use harness::devkeys::DevIssuer;
use harness::envoy::{self, Envoy, Ports};
use harness::{demo, http};

use crate::Result;

/// Runs until Ctrl-C (or until Envoy exits), then stops Envoy.
pub fn run(port: u16) -> Result {
    crate::tools::ensure_envoy()?;
    let wasm = crate::wasm::build()?;
    let issuer = DevIssuer::generate().map_err(|e| e.to_string())?;
    let free = Ports::free().map_err(|e| e.to_string())?;
    let ports = Ports {
        listener: port,
        ..free
    };
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("port {port} is not free ({e}); pass --port"))?;
    let config =
        envoy::config(ports, &wasm, &demo::plugin_config(&issuer)).map_err(|e| e.to_string())?;
    let mut proxy = Envoy::start(&config, ports, 2).map_err(|e| e.to_string())?;
    let ready = proxy
        .wait_ready(Duration::from_secs(60))
        .map_err(|e| e.to_string())?;

    let base = proxy.url("");
    let alice = issuer.token("alice", &["admins"]);
    let bob = issuer.token("bob", &["staff"]);
    println!(
        "Portcullis demo: Envoy {} serving {base} (first answer {ready:.2?} after start)",
        proxy.pid()
    );
    println!("Filter: {}", wasm.display());
    println!(
        "Policies: envoy/demo-policies.cedar; tokens from a dev RSA key generated just now.\n"
    );
    println!("ALICE={alice}   # sub alice, groups [admins]");
    println!("BOB={bob}   # sub bob, groups [staff]\n");

    let agent = http::agent(Duration::from_secs(5));
    let checks: [(&str, &str, Option<&str>, &str); 6] = [
        ("GET", "/api/hello", None, "401: no token"),
        ("GET", "/api/hello", Some("not.a.token"), "401: bad token"),
        ("GET", "/api/hello", Some(&bob), "200: any user may read"),
        (
            "DELETE",
            "/api/items/7",
            Some(&bob),
            "403: only admins may write",
        ),
        (
            "GET",
            "/admin/users",
            Some(&bob),
            "403: admin area is for admins",
        ),
        (
            "DELETE",
            "/admin/users/9",
            Some(&alice),
            "200: admins may do anything",
        ),
    ];
    println!("Try (each line was just run; the status seen is on the left):");
    for (method, path, token, expect) in checks {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(proxy.url(path));
        let shown_auth = match token {
            None => String::new(),
            Some(t) => {
                req = req.header("authorization", format!("Bearer {t}"));
                let var = if t == alice {
                    "$ALICE"
                } else if t == bob {
                    "$BOB"
                } else {
                    t
                };
                format!(" -H \"authorization: Bearer {var}\"")
            }
        };
        let seen = req
            .body(())
            .map_err(|e| e.to_string())
            .and_then(|r| agent.run(r).map_err(|e| e.to_string()))
            .map_or_else(
                |e| format!("error: {e}"),
                |r| r.status().as_u16().to_string(),
            );
        println!("  [{seen}] curl -i -X {method}{shown_auth} {base}{path}    # expect {expect}");
    }
    println!(
        "\nStats: curl -s http://127.0.0.1:{}/stats | grep wasm",
        ports.admin
    );
    println!("Press Ctrl-C to stop.");

    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    loop {
        if rx.recv_timeout(Duration::from_millis(500)).is_ok() {
            println!("\nstopping Envoy");
            break;
        }
        if !proxy.is_running() {
            return Err(format!("Envoy exited:\n{}", proxy.log()));
        }
    }
    drop(proxy);
    Ok(())
}
