"""Models built on tinygen: the GAN, the VAE, and the MNIST classifier used to score them."""
