"""Fair re-ranking and reservation-aware shortlists, shared by the gateway and the evaluation."""
