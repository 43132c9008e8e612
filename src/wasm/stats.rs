//! Glue for the TCP stats filter (placeholder root: counts nothing yet; the stats filter lands
//! with its own issue).

use proxy_wasm::traits::{Context, StreamContext};

pub struct StatsRoot;

impl StatsRoot {
    pub fn configure(_root_context_id: u32, _config: &[u8]) -> Result<Self, String> {
        Ok(StatsRoot)
    }

    pub fn on_tick(&mut self) {}

    pub fn create_stream(&self, _context_id: u32) -> Box<dyn StreamContext> {
        Box::new(StatsStream)
    }
}

struct StatsStream;

impl Context for StatsStream {}
impl StreamContext for StatsStream {}
