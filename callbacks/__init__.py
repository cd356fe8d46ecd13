"""cyclr's callbacks: events, cancellation, the Recorder, progress bars, schedules and the LR finder."""
