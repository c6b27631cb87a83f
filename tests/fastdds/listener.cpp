// A ROS 2 listener on Fast DDS' defaults: subscribes to rt/microk8s_chatter for `--duration`
// seconds (or until SIGTERM/SIGINT), prints every sample and, at the end, a summary the tests
// parse:
//   summary heard <talker name> <samples>              one line per talker heard
//   summary participant <guid prefix> vendor <vv.vv> name <participant name>
//                                                      one line per remote participant discovered
// `--user-data TEXT` sets the participant's USER_DATA (ddsperf lists only peers whose
// USER_DATA carries its tag). Exit code: 0 when at least one sample was heard, 2 when none,
// 1 on bad arguments or a Fast DDS setup error.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fastdds/dds/domain/DomainParticipantListener.hpp>
#include <fastdds/dds/subscriber/DataReader.hpp>
#include <fastdds/dds/subscriber/SampleInfo.hpp>
#include <fastdds/dds/subscriber/Subscriber.hpp>

#include "ros_string.hpp"

using namespace ros_judge;

namespace {

std::atomic<bool> stop{false};

struct Participant {
    std::string vendor;
    std::string name;
};

// Discovered participants and samples per talker, filled from Fast DDS' threads.
struct Judge : fdds::DomainParticipantListener {
    std::mutex lock;
    std::map<std::string, Participant> participants;  // by GUID prefix
    std::map<std::string, int> heard;                 // by talker name

    void on_participant_discovery(fdds::DomainParticipant*,
            frtps::ParticipantDiscoveryInfo&& info) override
    {
        // info.info is only valid during this call: copy what is kept.
        std::string prefix = guid_prefix_string(info.info.m_guid.guidPrefix);
        std::string vendor = vendor_string(info.info.m_VendorId);
        std::string name = info.info.m_participantName.to_string();
        if (info.status == frtps::ParticipantDiscoveryInfo::DISCOVERED_PARTICIPANT) {
            std::lock_guard<std::mutex> g(lock);
            participants[prefix] = {vendor, name};
            std::cout << "discovered participant " << prefix << " vendor " << vendor << " name "
                      << name << std::endl;
        }
    }

    void on_subscription_matched(fdds::DataReader*, const fdds::SubscriptionMatchedStatus& s) override
    {
        std::cout << "listener: matched publications " << s.current_count << std::endl;
    }

    void on_data_available(fdds::DataReader* reader) override
    {
        StringMsg msg;
        fdds::SampleInfo info;
        while (reader->take_next_sample(&msg, &info) == ReturnCode_t::RETCODE_OK) {
            if (!info.valid_data) {
                continue;
            }
            std::cout << "heard: " << msg.data << std::endl;
            // "hello from <name> <i>": the talker's name is what lies between.
            const std::string lead = "hello from ";
            auto last_space = msg.data.rfind(' ');
            std::string talker = msg.data.compare(0, lead.size(), lead) == 0 && last_space > lead.size() ?
                    msg.data.substr(lead.size(), last_space - lead.size()) : "?";
            std::lock_guard<std::mutex> g(lock);
            ++heard[talker];
        }
    }
};

} // namespace

int main(int argc, char** argv)
{
    double duration = 8.0;
    std::string name = "listener";
    std::string user_data;
    for (int i = 1; i < argc; ++i) {
        std::string k = argv[i];
        if (k == "--duration" && i + 1 < argc) {
            duration = std::atof(argv[++i]);
        } else if (k == "--name" && i + 1 < argc) {
            name = argv[++i];
        } else if (k == "--user-data" && i + 1 < argc) {
            user_data = argv[++i];
        } else {
            std::cerr << "usage: fastdds-listener [--duration SECONDS] [--name NAME] [--user-data TEXT]\n";
            return 1;
        }
    }
    std::signal(SIGTERM, [](int) { stop = true; });
    std::signal(SIGINT, [](int) { stop = true; });

    Judge judge;
    auto* participant = default_participant(name, &judge, user_data);
    auto* topic = chatter_topic(participant);
    auto* subscriber = topic ? participant->create_subscriber(fdds::SUBSCRIBER_QOS_DEFAULT) : nullptr;
    fdds::DataReaderQos qos = fdds::DATAREADER_QOS_DEFAULT;
    ros_default_qos(qos);
    // The reader's own listener: on the participant's, Fast DDS would report
    // on_data_on_readers instead of on_data_available.
    auto* reader = subscriber ? subscriber->create_datareader(topic, qos, &judge) : nullptr;
    if (!reader) {
        std::cerr << "listener: cannot set up the participant, topic or reader\n";
        return 1;
    }
    std::cout << "listener " << name << ": participant "
              << guid_prefix_string(participant->guid().guidPrefix) << std::endl;

    auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(duration);
    while (!stop && std::chrono::steady_clock::now() < end) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }

    participant->delete_contained_entities();
    fdds::DomainParticipantFactory::get_instance()->delete_participant(participant);

    std::lock_guard<std::mutex> g(judge.lock);
    int total = 0;
    for (const auto& [talker, n] : judge.heard) {
        std::cout << "summary heard " << talker << " " << n << std::endl;
        total += n;
    }
    for (const auto& [prefix, p] : judge.participants) {
        std::cout << "summary participant " << prefix << " vendor " << p.vendor << " name " << p.name
                  << std::endl;
    }
    return total > 0 ? 0 : 2;
}
