"""The engine: sampling, prompt building, batch slots, scheduler, runner and the frame loop."""
