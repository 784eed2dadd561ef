// Test kit: the image builder lives in src/images (hangar up seeds its local registry with it);
// tests push the same ready-made images to their own registry.
export * from '../../src/images/image-builder.js'
