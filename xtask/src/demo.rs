//! `cargo xtask demo`: Envoy + filter on 127.0.0.1 with the embedded default bundle.

use std::sync::mpsc;
use std::time::Duration;

use harness::devkeys::DevIssuer;
use harness::envoy::{self, Envoy, Ports};
use harness::{demo, http};

use crate::Result;

/// Runs until Ctrl-C (or until Envoy exits), then stops Envoy (and with `live`, policy-sync
/// and its Postgres). With `native`, Envoy runs the native module instead of the Wasm module.
pub fn run(port: u16, live: bool, native: bool) -> Result {
    crate::install::ensure_envoy()?;
    let module = if native {
        crate::native::build(crate::native::Profile::Release)?
    } else {
        crate::wasm::build()?
    };
    let live = if live {
        Some(crate::live::start(
            &crate::process::repo_root().join("envoy/demo-policies.cedar"),
        )?)
    } else {
        None
    };
    let issuer = DevIssuer::generate().map_err(|e| e.to_string())?;
    let free = Ports::free().map_err(|e| e.to_string())?;
    let ports = Ports {
        listener: port,
        ..free
    };
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("port {port} is not free ({e}); pass --port"))?;
    let plugin_config = live
        .as_ref()
        .map_or_else(|| demo::plugin_config(&issuer), |l| l.plugin_config.clone());
    let config = match &live {
        Some(l) if native => envoy::native_config_following(ports, &module, &plugin_config, l.port),
        Some(l) => envoy::config_following(ports, &module, &plugin_config, l.port),
        None if native => envoy::native_config(ports, &module, &plugin_config),
        None => envoy::config(ports, &module, &plugin_config),
    }
    .map_err(|e| e.to_string())?;
    let mut proxy = Envoy::start(&config, ports, 2).map_err(|e| e.to_string())?;
    let ready = proxy
        .wait_ready(Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    if let Some(l) = &live {
        // The filter answers 503 until its first document from policy-sync.
        let agent = http::agent(Duration::from_secs(5));
        let url = proxy.url("/api/hello");
        let started = std::time::Instant::now();
        while agent
            .get(&url)
            .header("authorization", format!("Bearer {}", l.bob))
            .call()
            .map(|r| r.status().as_u16())
            .ok()
            != Some(200)
        {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "the filter did not take policy-sync's first document:\n{}",
                    proxy.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    let base = proxy.url("");
    let (alice, bob) = match &live {
        Some(l) => (l.alice.clone(), l.bob.clone()),
        None => (
            issuer.token("alice", &["admins"]),
            issuer.token("bob", &["staff"]),
        ),
    };
    println!(
        "Portcullis demo: Envoy {} serving {base} (first answer {ready:.2?} after start)",
        proxy.pid()
    );
    println!("Filter: {}", module.display());
    match &live {
        None => println!(
            "Policies: envoy/demo-policies.cedar; tokens from a dev RSA key generated just now.\n"
        ),
        Some(l) => println!(
            "Policies: envoy/demo-policies.cedar, stored in Postgres and published by policy-sync \
             as version {}; tokens from `policy-sync dev-token` (EdDSA).\n",
            l.version
        ),
    }
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
        "\nStats: curl -s http://127.0.0.1:{}/stats | grep {}",
        ports.admin,
        if native {
            "dynamicmodulescustom"
        } else {
            "wasmcustom"
        }
    );
    if let Some(l) = &live {
        println!("\npolicy-sync (Postgres is the source of truth):");
        println!("  export PORTCULLIS_DATABASE_URL='{}'", l.database_url);
        println!("  export ADMIN={}   # admin API token", l.admin_token);
        println!("  export FILTER={}   # filter token", l.filter_token);
        println!("  {} policy list", l.binary.display());
        println!(
            "  curl -s -H \"authorization: Bearer $FILTER\" '{}/v1/bundles/default?after={}&wait=30'   # waits for the next version",
            l.api, l.version
        );
        println!(
            "  curl -s -X PUT -H \"authorization: Bearer $ADMIN\" -H 'content-type: application/json' \\\n    \
             -d '{{\"text\": \"forbid(principal, action == Action::\\\"DELETE\\\", resource);\"}}' \\\n    \
             {}/v1/admin/tenants/default/policies/no-deletes   # the waiting curl answers at once",
            l.api
        );
        println!(
            "  curl -s -H \"authorization: Bearer $ADMIN\" {}/v1/admin/versions",
            l.api
        );
        crate::live::flip(l, &proxy.url("/api/items/7"), &l.bob)?;
        println!(
            "  {} policy rm staff-may-delete   # and back (scratch files in {})",
            l.binary.display(),
            l.dir.path().display()
        );
    }
    println!("Press Ctrl-C to stop.");

    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    loop {
        if rx.recv_timeout(Duration::from_millis(500)).is_ok() {
            println!(
                "\nstopping Envoy{}",
                if live.is_some() {
                    ", policy-sync and Postgres"
                } else {
                    ""
                }
            );
            break;
        }
        if !proxy.is_running() {
            return Err(format!("Envoy exited:\n{}", proxy.log()));
        }
    }
    drop(proxy);
    drop(live);
    Ok(())
}
