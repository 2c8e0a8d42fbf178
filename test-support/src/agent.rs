//! The Consul a test talks to: the agent `CONSUL_HTTP_ADDR` names when set (so the same
//! tests run against a real Consul), else a fresh in-process double.

#[derive(Debug)]
pub enum Agent {
    Double(consul_double::ConsulDouble),
    Real(String),
}

impl Agent {
    pub async fn start(config: consul_double::DoubleConfig) -> Self {
        match std::env::var("CONSUL_HTTP_ADDR") {
            Ok(addr) if !addr.is_empty() => {
                let url = if addr.contains("://") {
                    addr
                } else {
                    format!("http://{addr}")
                };
                Self::Real(url)
            }
            _ => Self::Double(
                consul_double::ConsulDouble::start(config)
                    .await
                    .expect("start the Consul double"),
            ),
        }
    }

    pub fn url(&self) -> String {
        match self {
            Self::Double(d) => d.url(),
            Self::Real(url) => url.clone(),
        }
    }

    /// The double, for tests that restart or stop the agent; `None` (after saying so) with
    /// a real agent.
    pub fn double(&self) -> Option<&consul_double::ConsulDouble> {
        match self {
            Self::Double(d) => Some(d),
            Self::Real(_) => {
                eprintln!("skipped: this test restarts or stops the agent; it needs the double");
                None
            }
        }
    }

    /// Takes the double out, for a test that stops it and starts another on its address;
    /// `None` (after saying so) with a real agent.
    pub fn take_double(&mut self) -> Option<consul_double::ConsulDouble> {
        let url = self.url();
        match std::mem::replace(self, Self::Real(url)) {
            Self::Double(d) => Some(d),
            Self::Real(_) => {
                eprintln!("skipped: this test stops the agent; it needs the double");
                None
            }
        }
    }
}
