// The namespace star lives in src/network (hangar up --hosts uses it too).
export * from '../../src/network/netns-star.js'
