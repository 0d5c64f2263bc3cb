//! Noise schedules and samplers: rectified flow (as released by Text2CT), DDPM and DDIM, classifier-free guidance.
