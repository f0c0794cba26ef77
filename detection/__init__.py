"""detection: Faster R-CNN on ResNet C4 / DC5 features (He et al. 2016, Appendix A)."""
