//! Neural networks of text2ct (burn): MAISI VAE, diffusion U-Net, 3D CLIP.
