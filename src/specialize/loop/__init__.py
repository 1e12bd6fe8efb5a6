"""The loop: drift -> new labelled rows -> a challenger version, promoted only if it wins."""
