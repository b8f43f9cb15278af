"""Model slots (clip, blip, fashion): tiny checkpoint maker, loaders, and the per-worker registry."""
