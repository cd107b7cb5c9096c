//! The Cedar floor: a proxy-wasm plugin whose only work is Cedar's. It parses its plugin
//! configuration (a JSON string of Cedar policy text, or with feature `json` a JSON array of
//! policies in Cedar's JSON form) once, and decides each request as
//! `User::"<x-user>"` doing `Action::"<method>"` on `Path::"<path>"`: the upstream answers
//! when Cedar allows, the plugin answers 403 when it denies or cannot decide.
//!
//! `cargo xtask measure` starts Envoy with it beside the no-op module and Portcullis: what it
//! costs over the no-op module is what Cedar's parser and evaluator alone cost V8 (module
//! compile time and code memory), the least a filter built on this Cedar (this release, its
//! default features, the filter's size-optimised profile) pays inside Envoy. The `json` build
//! is for its size only: the measurement runs the text build.

use std::rc::Rc;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context as CedarContext, Decision, Entities, EntityId, EntityTypeName, EntityUid,
    PolicySet, Request,
};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    policies: Option<Rc<PolicySet>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let Ok(text) = std::str::from_utf8(&config) else {
            return false;
        };
        match parse(text) {
            Ok(set) => {
                self.policies = Some(Rc::new(set));
                true
            }
            Err(e) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &format!("cedar-floor: {e}")).ok();
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            policies: self.policies.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    policies: Option<Rc<PolicySet>>,
}

impl Context for Http {}

/// Policy text: the configuration is a JSON string of it (how the harness renders one).
#[cfg(not(feature = "json"))]
fn parse(config: &str) -> Result<PolicySet, String> {
    let text: String = serde_json::from_str(config).map_err(|e| e.to_string())?;
    PolicySet::from_str(&text).map_err(|e| e.to_string())
}

/// Cedar's JSON form of policies (feature `json`): the configuration is a JSON array of them.
/// This build prices shipping policies already parsed: Cedar reads names in that form with
/// its text parser too, so the parser stays in the module.
#[cfg(feature = "json")]
fn parse(config: &str) -> Result<PolicySet, String> {
    let policies: Vec<serde_json::Value> =
        serde_json::from_str(config).map_err(|e| e.to_string())?;
    let policies = policies.into_iter().enumerate().map(|(i, json)| {
        let id = cedar_policy::PolicyId::new(format!("policy{i}"));
        cedar_policy::Policy::from_json(Some(id), json).map_err(|e| e.to_string())
    });
    PolicySet::from_policies(policies.collect::<Result<Vec<_>, _>>()?).map_err(|e| e.to_string())
}

fn uid(type_name: &str, id: &str) -> Option<EntityUid> {
    let type_name = EntityTypeName::from_str(type_name).ok()?;
    Some(EntityUid::from_type_name_and_id(
        type_name,
        EntityId::new(id),
    ))
}

impl Http {
    fn decide(&self) -> Option<Decision> {
        let policies = self.policies.as_deref()?;
        let user = self.get_http_request_header("x-user").unwrap_or_default();
        let method = self.get_http_request_header(":method")?;
        let path = self.get_http_request_header(":path")?;
        let request = Request::new(
            uid("User", &user)?,
            uid("Action", &method)?,
            uid("Path", &path)?,
            CedarContext::empty(),
            None,
        )
        .ok()?;
        let answer = Authorizer::new().is_authorized(&request, policies, &Entities::empty());
        Some(answer.decision())
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.decide() == Some(Decision::Allow) {
            return Action::Continue;
        }
        self.send_http_response(403, vec![], Some(b"denied"));
        Action::Pause
    }
}
