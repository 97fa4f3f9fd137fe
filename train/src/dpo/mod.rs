//! Preference tuning with DPO: the objective ([`loss`]), its pass over micro-batches of pairs
//! ([`pass`]), the reference's log-probabilities, computed once per example with the adapters
//! switched off and kept with the run ([`reference`]), and the optimizer step ([`step`]).

pub mod loss;
pub mod pass;
pub mod reference;
pub mod step;
