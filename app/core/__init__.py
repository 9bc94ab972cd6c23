"""What the app computes and keeps, with no page: every bound (`limits`), the user's settings,
photos and sweep files read safely, the loaded models, the model runs (`inference`, the only
GPU code), their GMACs (`costs`), the immutable results and the bounded caches holding them."""
